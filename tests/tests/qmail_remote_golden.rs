//! Golden tests: every report of docs/qmail-remote.md §2.10 that a server, the arguments, the control files or
//! the message can cause, byte for byte, against a scripted SMTP server on loopback (reached
//! through smtproutes, which skips the loop rule like stock). Every run is made the way
//! qmail-rspawn makes it (fd 0 a queued file, fd 1+2 one pipe, cwd queue/mess, uid nobody) and
//! its output is also condensed with qmail-rspawn's rule, which must give the expected K/Z/D.
//! DNS-driven reports are in qmail_remote_dns.rs.

use std::time::Duration;

use guard_tests::qmail_remote::{Invocation, QmailHome};
use guard_tests::rspawn::show;
use guard_tests::smtp_sink::{Reply, Script, SmtpSink};

const IP: &str = "127.0.0.1";
const MSG: &[u8] = b"From: s@x.test\nSubject: golden\n\nhello\n";

/// A home whose default route goes to the sink.
fn home_for(sink: &SmtpSink) -> QmailHome {
    let h = QmailHome::new();
    h.write_control("smtproutes", &format!(":{IP}:{}\n", sink.port()));
    h
}

fn sink(script: Script) -> SmtpSink {
    SmtpSink::start(None, "127.0.0.1:0", script)
}

/// Runs one delivery of MSG to r@example.test through a sink with `script`.
fn deliver(script: Script) -> (guard_tests::qmail_remote::RemoteRun, SmtpSink) {
    let s = sink(script);
    let h = home_for(&s);
    let run = Invocation::new(&h, "example.test", "s@x.test", &["r@example.test"])
        .message(MSG)
        .run();
    (run, s)
}

fn said(s: &str) -> String {
    format!("Remote host said: {s}\n")
}

#[test]
fn success_report_and_exact_wire_bytes() {
    let (run, s) = deliver(Script::default());
    run.expect(
        format!("r\0K{IP} accepted message.\n{}\0", said("250 ok queued")).as_bytes(),
        b'K',
    );
    let sess = s.one_session();
    assert_eq!(
        show(&sess.received),
        show(
            b"EHLO qmail-remote.test\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<r@example.test>\r\nDATA\r\n\
              From: s@x.test\r\nSubject: golden\r\n\r\nhello\r\n.\r\nQUIT\r\n"
        )
    );
    assert_eq!(
        run.condensed(),
        format!("K{IP} accepted message.\n{}", said("250 ok queued")).as_bytes()
    );
}

#[test]
fn helohost_overrides_me_and_multiline_replies_are_kept() {
    let s = sink(Script {
        greeting: Reply::line("220-sink.test first\n220-second\n220 last"),
        after_dot: Reply::line("250-ok\n250 queued as 1"),
        ..Script::default()
    });
    let h = home_for(&s);
    h.write_control("helohost", "helo.example.test \t\n");
    let run = Invocation::new(&h, "example.test", "s@x.test", &["r@example.test"])
        .message(MSG)
        .run();
    run.expect(
        format!("r\0K{IP} accepted message.\nRemote host said: 250-ok\n250 queued as 1\n\0")
            .as_bytes(),
        b'K',
    );
    assert!(
        s.one_session()
            .received
            .starts_with(b"EHLO helo.example.test\r\n")
    );
}

#[test]
fn greeting_not_220_is_temporary_for_4xx_and_5xx() {
    for code in ["421 busy", "554 go away", "250 odd"] {
        let (run, s) = deliver(Script {
            greeting: Reply::line(code),
            ..Script::default()
        });
        run.expect(
            format!("ZConnected to {IP} but greeting failed.\n{}\0", said(code)).as_bytes(),
            b'Z',
        );
        let sess = s.one_session();
        assert_eq!(sess.received, b"QUIT\r\n", "QUIT only, for {code}");
    }
}

#[test]
fn helo_not_250() {
    let (run, _s) = deliver(Script {
        helo: Reply::line("501 bad name"),
        ..Script::default()
    });
    run.expect(
        format!(
            "ZConnected to {IP} but my name was rejected.\n{}\0",
            said("501 bad name")
        )
        .as_bytes(),
        b'Z',
    );
}

#[test]
fn sender_rejected_5xx_and_4xx() {
    let (run, _s) = deliver(Script {
        mail: Reply::line("553 no such sender"),
        ..Script::default()
    });
    run.expect(
        format!(
            "DConnected to {IP} but sender was rejected.\n{}\0",
            said("553 no such sender")
        )
        .as_bytes(),
        b'D',
    );
    let (run, _s) = deliver(Script {
        mail: Reply::line("451 try later"),
        ..Script::default()
    });
    run.expect(
        format!(
            "ZConnected to {IP} but sender was rejected.\n{}\0",
            said("451 try later")
        )
        .as_bytes(),
        b'Z',
    );
}

#[test]
fn recipient_rejected_5xx_4xx_and_giving_up() {
    let (run, s) = deliver(Script {
        rcpt: vec![Reply::line("550 no such user")],
        ..Script::default()
    });
    run.expect(
        format!(
            "h{IP} does not like recipient.\n{}\0DGiving up on {IP}.\n\0",
            said("550 no such user")
        )
        .as_bytes(),
        b'D',
    );
    assert!(
        s.one_session()
            .received
            .ends_with(b"RCPT TO:<r@example.test>\r\nQUIT\r\n")
    );
    let (run, _s) = deliver(Script {
        rcpt: vec![Reply::line("450 mailbox busy")],
        ..Script::default()
    });
    run.expect(
        format!(
            "s{IP} does not like recipient.\n{}\0DGiving up on {IP}.\n\0",
            said("450 mailbox busy")
        )
        .as_bytes(),
        b'Z',
    );
}

#[test]
fn several_recipients_get_one_report_each_in_order() {
    let s = sink(Script {
        rcpt: vec![
            Reply::line("550 no"),
            Reply::line("250 yes"),
            Reply::line("451 later"),
            Reply::line("250 yes"),
        ],
        ..Script::default()
    });
    let h = home_for(&s);
    let run = Invocation::new(
        &h,
        "example.test",
        "",
        &[
            "a@example.test",
            "b@example.test",
            "c@example.test",
            "d@example.test",
        ],
    )
    .message(MSG)
    .run();
    assert_eq!(
        run.show(),
        show(
            format!(
                "h{IP} does not like recipient.\n{}\0r\0s{IP} does not like recipient.\n{}\0r\0K{IP} accepted message.\n{}\0",
                said("550 no"),
                said("451 later"),
                said("250 ok queued")
            )
            .as_bytes()
        )
    );
    run.records();
    let got = s.one_session().received;
    assert!(got.starts_with(b"EHLO qmail-remote.test\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n"));
}

#[test]
fn data_rejected_5xx_and_4xx() {
    let (run, s) = deliver(Script {
        data: Reply::line("554 no data for you"),
        ..Script::default()
    });
    run.expect(
        format!(
            "r\0D{IP} failed on DATA command.\n{}\0",
            said("554 no data for you")
        )
        .as_bytes(),
        b'D',
    );
    assert!(s.one_session().received.ends_with(b"DATA\r\nQUIT\r\n"));
    let (run, _s) = deliver(Script {
        data: Reply::line("451 later"),
        ..Script::default()
    });
    run.expect(
        format!("r\0Z{IP} failed on DATA command.\n{}\0", said("451 later")).as_bytes(),
        b'Z',
    );
}

#[test]
fn after_dot_5xx_4xx_and_non_2xx() {
    let (run, _s) = deliver(Script {
        after_dot: Reply::line("554 spam"),
        ..Script::default()
    });
    run.expect(
        format!(
            "r\0D{IP} failed after I sent the message.\n{}\0",
            said("554 spam")
        )
        .as_bytes(),
        b'D',
    );
    let (run, _s) = deliver(Script {
        after_dot: Reply::line("452 full"),
        ..Script::default()
    });
    run.expect(
        format!(
            "r\0Z{IP} failed after I sent the message.\n{}\0",
            said("452 full")
        )
        .as_bytes(),
        b'Z',
    );
    // K only for 2xx after the dot (stock accepted any code below 400)
    let (run, _s) = deliver(Script {
        after_dot: Reply::line("354 what"),
        ..Script::default()
    });
    run.expect(
        format!(
            "r\0Z{IP} failed after I sent the message.\n{}\0",
            said("354 what")
        )
        .as_bytes(),
        b'Z',
    );
}

#[test]
fn connection_dropped_before_and_after_the_dot() {
    let died = format!("ZConnected to {IP} but connection died. (#4.4.2)\n\0");
    let (run, _s) = deliver(Script {
        greeting: Reply::Drop,
        ..Script::default()
    });
    run.expect(died.as_bytes(), b'Z');
    let (run, _s) = deliver(Script {
        mail: Reply::Drop,
        ..Script::default()
    });
    run.expect(died.as_bytes(), b'Z');
    let (run, s) = deliver(Script {
        data: Reply::Drop,
        ..Script::default()
    });
    run.expect(format!("r\0{died}").as_bytes(), b'Z');
    assert!(!s.one_session().quit);
    let (run, s) = deliver(Script {
        after_dot: Reply::Drop,
        ..Script::default()
    });
    run.expect(
        format!("r\0ZConnected to {IP} but connection died. Possible duplicate! (#4.4.2)\n\0")
            .as_bytes(),
        b'Z',
    );
    let sess = s.one_session();
    assert!(sess.dot && !sess.quit);
}

/// A connection that dies while the body is still going out cannot have delivered the message:
/// no "Possible duplicate!" (stock raises it only for the write that carries the final dot).
/// The message comes through a FIFO that is filled only after the server has reset, so the
/// client's body write always meets the reset.
#[test]
fn reset_after_354_is_no_possible_duplicate() {
    let mut msg = b"Subject: big\n\n".to_vec();
    while msg.len() < 4096 {
        msg.extend_from_slice(b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n");
    }
    let s = sink(Script {
        data: Reply::ThenReset(b"354 go ahead\r\n".to_vec()),
        ..Script::default()
    });
    let h = home_for(&s);
    let fifo = h.path().join("queue/mess/fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    let run = std::thread::scope(|sc| {
        let client = sc.spawn(|| {
            Invocation::new(&h, "example.test", "s@x.test", &["r@example.test"])
                .stdin_path(&fifo)
                .run()
        });
        // blocks until qmail-remote's stdin is opened
        let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while s.sessions().is_empty() {
            assert!(std::time::Instant::now() < deadline, "server never reset");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::io::Write::write_all(&mut w, &msg).unwrap();
        drop(w);
        client.join().unwrap()
    });
    run.expect(
        format!("r\0ZConnected to {IP} but connection died. (#4.4.2)\n\0").as_bytes(),
        b'Z',
    );
    assert!(!s.one_session().dot);
}

#[test]
fn timeoutremote_applies_to_each_read() {
    for (script, dup) in [
        (
            Script {
                greeting: Reply::Silent,
                ..Script::default()
            },
            "",
        ),
        (
            Script {
                rcpt: vec![Reply::Silent],
                ..Script::default()
            },
            "",
        ),
        (
            Script {
                after_dot: Reply::Silent,
                ..Script::default()
            },
            "Possible duplicate! ",
        ),
    ] {
        let s = sink(script);
        let h = home_for(&s);
        h.write_control("timeoutremote", "1\n");
        let run = Invocation::new(&h, "example.test", "s@x.test", &["r@example.test"])
            .message(MSG)
            .run();
        let rcpt = if dup.is_empty() { "" } else { "r\0" };
        run.expect(
            format!("{rcpt}ZConnected to {IP} but connection died. {dup}(#4.4.2)\n\0").as_bytes(),
            b'Z',
        );
        assert!(
            run.elapsed >= Duration::from_millis(900) && run.elapsed < Duration::from_secs(5),
            "took {:?}",
            run.elapsed
        );
    }
}

#[test]
fn no_connection_at_all() {
    // a port nobody listens on: refused at once
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = QmailHome::new();
    h.write_control("smtproutes", &format!("example.test:{IP}:{port}\n"));
    let run = Invocation::new(&h, "example.test", "s@x.test", &["r@example.test"])
        .message(MSG)
        .run();
    run.expect(
        b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n\0",
        b'Z',
    );
    // a refusal is not a timeout: no tcpto record
    assert!(h.tcpto().iter().all(|&b| b == 0));
}

#[test]
fn usage_chdir_and_control_errors() {
    let h = QmailHome::new();
    for args in [
        &[][..],
        &[&b"example.test"[..]][..],
        &[&b"example.test"[..], &b"s@x"[..]][..],
    ] {
        let run = Invocation::new(&h, "", "", &[]).raw_args(args).run();
        run.expect(
            b"DI (qmail-remote) was invoked improperly. (#5.3.5)\n\0",
            b'D',
        );
    }
    let run = Invocation::new(&h, "example.test", "s@x", &["r@example.test"])
        .env("QMAILHOME", "/nonexistent/qmail")
        .run();
    run.expect(b"ZUnable to switch to home directory. (#4.3.0)\n\0", b'Z');

    let temp_control = b"ZUnable to read control files. (#4.3.0)\n\0";
    // neither helohost nor me
    h.remove_control("me");
    let run = Invocation::new(&h, "[192.0.2.1]", "s@x", &["r@example.test"]).run();
    run.expect(temp_control, b'Z');
    h.write_control("me", "qmail-remote.test\n");
    // an unreadable control file (a directory)
    std::fs::create_dir(h.path().join("control/smtproutes")).unwrap();
    let run = Invocation::new(&h, "[192.0.2.1]", "s@x", &["r@example.test"]).run();
    run.expect(temp_control, b'Z');
    std::fs::remove_dir(h.path().join("control/smtproutes")).unwrap();
    // a bad moreipme line: the admin fixes it, nothing bounces
    h.write_control("moreipme", "192.0.2.1/ bogus\n");
    let run = Invocation::new(&h, "[192.0.2.1]", "s@x", &["r@example.test"]).run();
    run.expect(temp_control, b'Z');
}

#[test]
fn literal_of_ourselves_is_ambiguous_without_connecting() {
    // [127.0.0.1] and bare 127.0.0.1 are ours: stock's perm_ambigmx, no DNS, no connection
    let s = sink(Script::default());
    let h = QmailHome::new();
    h.write_control("smtproutes", ".other.test:127.0.0.1:1\n");
    let ambig = b"DSorry. Although I'm listed as a best-preference MX or A for that host,\n\
it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n\0";
    for host in ["[127.0.0.1]", "127.0.0.1", "[IPv6:::1]"] {
        let run = Invocation::new(&h, host, "s@x.test", &["r@example.test"])
            .message(MSG)
            .run();
        run.expect(ambig, b'D');
    }
    assert_eq!(s.connections(), 0);
}

#[test]
fn ipv6_relay_and_ipv6_off() {
    let s = SmtpSink::start(None, "[::1]:0", Script::default());
    let h = QmailHome::new();
    h.write_control("smtproutes", &format!(":[IPv6:::1]:{}\n", s.port()));
    let run = Invocation::new(&h, "example.test", "s@x.test", &["r@example.test"])
        .message(MSG)
        .run();
    run.expect(
        format!("r\0K::1 accepted message.\n{}\0", said("250 ok queued")).as_bytes(),
        b'K',
    );
    // control/remoteipv6 = 0: an IPv6-only destination has no usable address
    h.write_control("remoteipv6", "0\n");
    let run = Invocation::new(&h, "example.test", "s@x.test", &["r@example.test"])
        .message(MSG)
        .run();
    run.expect(
        b"DSorry, I couldn't find a mail exchanger or IP address. (#5.4.4)\n\0",
        b'D',
    );
    assert_eq!(s.connections(), 1);
}

#[test]
fn unreadable_message_and_partial_last_line_abort_without_dot() {
    let s = sink(Script::default());
    let h = home_for(&s);
    // fd 0 is a directory: read fails with EISDIR
    let run = Invocation::new(&h, "example.test", "s@x.test", &["r@example.test"])
        .stdin_path(&h.path().join("queue"))
        .run();
    run.expect(b"r\0ZUnable to read message. (#4.3.0)\n\0", b'Z');
    let run = Invocation::new(&h, "example.test", "s@x.test", &["r@example.test"])
        .message(b"line\nno newline")
        .run();
    run.expect(
        b"r\0DSMTP cannot transfer messages with partial final lines. (#5.6.2)\n\0",
        b'D',
    );
    for sess in s.finished_sessions() {
        assert!(
            !sess.dot && !sess.quit,
            "the transaction must be abandoned: {sess:?}"
        );
    }
}

#[test]
fn addresses_are_quoted_like_stock() {
    let (s, h) = {
        let s = sink(Script::default());
        let h = home_for(&s);
        (s, h)
    };
    let run = Invocation::new(
        &h,
        "example.test",
        "a b@x.test",
        &["#@[]", "\"q\"\\@example.test", "x..y@example.test"],
    )
    .message(MSG)
    .run();
    assert!(run.condensed().starts_with(b"K"), "{}", run.show());
    let got = String::from_utf8(s.one_session().received).unwrap();
    assert!(got.contains("MAIL FROM:<\"a b\"@x.test>\r\n"), "{got}");
    assert!(got.contains("RCPT TO:<#@[]>\r\n"), "{got}");
    assert!(
        got.contains("RCPT TO:<\"\\\"q\\\"\\\\\"@example.test>\r\n"),
        "{got}"
    );
    assert!(got.contains("RCPT TO:<\"x..y\"@example.test>\r\n"), "{got}");
}

#[test]
fn reply_text_is_sanitised_like_stock() {
    // NUL shown as '?', CR dropped, code garbage treated as permanent, 5000-byte cap
    let (run, _s) = deliver(Script {
        mail: Reply::raw(b"55\x00 odd\r\r\n"),
        ..Script::default()
    });
    run.expect(
        format!("DConnected to {IP} but sender was rejected.\nRemote host said: 55? odd\n\0")
            .as_bytes(),
        b'D',
    );
    let long = format!("550-{}\r\n550 end\r\n", "x".repeat(6000));
    let (run, _s) = deliver(Script {
        mail: Reply::raw(long.as_bytes()),
        ..Script::default()
    });
    let text = run.records().last().unwrap().clone();
    let prefix = format!("DConnected to {IP} but sender was rejected.\nRemote host said: ");
    assert!(text.starts_with(prefix.as_bytes()));
    assert_eq!(text.len() - prefix.len(), 5000);
}
