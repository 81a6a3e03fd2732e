//! Message encoding on the wire (docs/qmail-remote.md §2.9): what the SMTP server receives between DATA and the
//! final dot, for the messages that break naive encoders: empty, leading dots, bare CR, CRLF
//! input, 8-bit bytes, and 1 MB. The expected bytes come from the rules, written out
//! independently of the implementation.

use guard_tests::qmail_remote::{Invocation, QmailHome};
use guard_tests::rspawn::show;
use guard_tests::smtp_sink::{Script, SmtpSink};

/// Delivers `msg` to a loopback sink; returns the DATA payload as received (without the final
/// `.\r\n`) after checking the delivery succeeded and the dot arrived.
fn wire(msg: &[u8]) -> Vec<u8> {
    let sink = SmtpSink::start(None, "127.0.0.1:0", Script::default());
    let home = QmailHome::new();
    home.write_control("smtproutes", &format!(":127.0.0.1:{}\n", sink.port()));
    let r = Invocation::new(&home, "example.test", "s@x.test", &["r@example.test"])
        .message(msg)
        .run();
    r.expect(
        b"r\0K127.0.0.1 accepted message.\nRemote host said: 250 ok queued\n\0",
        b'K',
    );
    let s = sink.one_session();
    assert!(s.dot && s.quit);
    s.data
}

/// The rules, byte by byte: LF and CRLF end a line (CRLF out), a bare CR also ends a line, a
/// line starting with '.' gets one more.
fn reference(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut start = true;
    let mut i = 0;
    while i < msg.len() {
        let b = msg[i];
        if b == b'\r' || b == b'\n' {
            out.extend_from_slice(b"\r\n");
            start = true;
            i += if b == b'\r' && msg.get(i + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            continue;
        }
        if start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        start = false;
        i += 1;
    }
    out
}

/// SMTP-level invariants of a payload: no bare CR or LF, and no line that is a lone dot.
fn check_smtp_safe(data: &[u8]) {
    for (i, &b) in data.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(data.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
        if b == b'\n' {
            assert!(i > 0 && data[i - 1] == b'\r', "bare LF at {i}");
        }
    }
    for line in data.split(|&b| b == b'\n') {
        assert_ne!(
            line, b".\r",
            "an unstuffed end-of-data line inside the message"
        );
    }
}

#[test]
fn empty_message() {
    assert_eq!(wire(b""), b"");
}

#[test]
fn leading_dots_are_doubled() {
    let m = b".\n..\n.x\nx.\n\n.\n";
    let w = wire(m);
    assert_eq!(show(&w), show(b"..\r\n...\r\n..x\r\nx.\r\n\r\n..\r\n"));
    check_smtp_safe(&w);
}

#[test]
fn crlf_input_stays_crlf() {
    let m = b"Subject: x\r\n\r\nbody\r\n.\r\n";
    let w = wire(m);
    assert_eq!(show(&w), show(b"Subject: x\r\n\r\nbody\r\n..\r\n"));
}

#[test]
fn bare_cr_never_yields_an_unstuffed_dot_line() {
    // notqmail 1.09 sends "a\r\n.\r\n" for the first line: end of data in mid-message
    let m = b"a\r.\nb\r\r.\n\r.x\nc\rd\n";
    let w = wire(m);
    assert_eq!(
        show(&w),
        show(b"a\r\n..\r\nb\r\n\r\n..\r\n\r\n..x\r\nc\r\nd\r\n")
    );
    check_smtp_safe(&w);
    assert_eq!(w, reference(m));
}

#[test]
fn eight_bit_bytes_pass_unchanged() {
    let mut m = b"Subject: =?x?=\n\n".to_vec();
    m.extend(
        (0u8..=255)
            .filter(|&b| b != b'\n' && b != b'\r' && b != 0)
            .chain([0u8]),
    );
    m.push(b'\n');
    let w = wire(&m);
    assert_eq!(w, reference(&m));
    check_smtp_safe(&w);
}

#[test]
fn one_megabyte_message() {
    // lines of varying length, some starting with dots or containing CRs, across many reads
    let mut m = Vec::with_capacity(1 << 20);
    let mut x: u32 = 12345;
    while m.len() < (1 << 20) - 200 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let len = (x >> 16) % 190;
        if x & 7 == 0 {
            m.push(b'.');
        }
        for k in 0..len {
            m.push(b"abcdefghij.\x80\xff "[((x >> 3) as usize + k as usize) % 14]);
        }
        if x & 31 == 1 {
            m.push(b'\r');
        }
        m.push(b'\n');
    }
    let w = wire(&m);
    assert_eq!(w.len(), reference(&m).len());
    assert!(
        w == reference(&m),
        "1 MB payload differs from the reference encoding"
    );
    check_smtp_safe(&w);
}
