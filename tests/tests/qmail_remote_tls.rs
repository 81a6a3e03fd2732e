//! STARTTLS, SMTPS, AUTH and SIZE (docs/qmail-remote-tls.md) against real servers: Exim with a
//! certificate from a CA the test makes, dnsmasq for the MX names, qmail-remote in the client
//! netns of an MxScene. Report texts are checked byte for byte; Exim's log shows what really
//! happened on the wire (P=esmtps X=TLS…, A=plain:u1).

use std::fs;

use guard_tests::dnsmasq::Dnsmasq;
use guard_tests::mta::{Exim, EximOptions};
use guard_tests::mx_scene::MxScene;
use guard_tests::pki::Pki;
use guard_tests::qmail_remote::{Invocation, QmailHome, RemoteRun};
use guard_tests::rspawn::show;
use guard_tests::smtp_sink::{Reply, Script, SmtpSink};

/// Exim with STARTTLS (and SMTPS on 465, AUTH PLAIN).
const A_TLS: &str = "203.0.113.25";
/// Exim without STARTTLS.
const A_PLAIN: &str = "203.0.113.26";
/// Exim with STARTTLS and AUTH LOGIN only.
const A_LOGIN: &str = "203.0.113.27";
/// A scripted server that offers STARTTLS but breaks the handshake.
const A_BROKEN: &str = "203.0.113.28";
/// Exim with a certificate that has a commonName but no subjectAltName.
const A_CN: &str = "203.0.113.29";
/// Exim with a certificate that has neither.
const A_NOCN: &str = "203.0.113.30";

const MSG: &[u8] = b"From: s@x.test\nSubject: tls\n\nhello over TLS\n";

struct World {
    pki: Pki,
    home: QmailHome,
    scene: MxScene,
    _dns: Dnsmasq,
}

/// The scene, the CA `ca` with a server certificate for mx.tls.test (and login.tls.test), a
/// second CA `other`, DNS for every test name, and a qmail home.
fn world() -> World {
    let scene = MxScene::new(&[A_TLS, A_PLAIN, A_LOGIN, A_BROKEN, A_CN, A_NOCN]);
    let pki = Pki::new();
    pki.ca("ca");
    pki.ca("other");
    pki.server(
        "mx",
        "ca",
        "mx.tls.test",
        &["mx.tls.test", "login.tls.test"],
    );
    let dns = Dnsmasq::start(
        &scene.client,
        &[
            "mx-host=tls.test,mx.tls.test,10",
            &format!("host-record=mx.tls.test,{A_TLS}"),
            "mx-host=wrong.test,alias.tls.test,10",
            &format!("host-record=alias.tls.test,{A_TLS}"),
            "mx-host=plain.test,plain.tls.test,10",
            &format!("host-record=plain.tls.test,{A_PLAIN}"),
            "mx-host=login.test,login.tls.test,10",
            &format!("host-record=login.tls.test,{A_LOGIN}"),
            "mx-host=broken.test,broken.tls.test,10",
            &format!("host-record=broken.tls.test,{A_BROKEN}"),
            "mx-host=cn.test,cn.tls.test,10",
            &format!("host-record=cn.tls.test,{A_CN}"),
            "mx-host=cnwrong.test,cnalias.tls.test,10",
            &format!("host-record=cnalias.tls.test,{A_CN}"),
            "mx-host=nocn.test,nocn.tls.test,10",
            &format!("host-record=nocn.tls.test,{A_NOCN}"),
        ],
    );
    let home = QmailHome::new();
    for d in ["tlshosts", "notlshosts"] {
        fs::create_dir_all(home.path().join("control").join(d)).expect("mkdir");
    }
    home.write_control("timeoutremote", "10\n");
    World {
        pki,
        home,
        scene,
        _dns: dns,
    }
}

impl World {
    fn exim(&self, addr: &str, opts: EximOptions) -> Exim {
        Exim::start_with(&self.scene.servers, addr, 25, &opts)
    }

    fn tls_opts(&self) -> EximOptions {
        EximOptions {
            tls: Some((self.pki.path("mx.pem"), self.pki.path("mx.key"))),
            ..EximOptions::default()
        }
    }

    fn run(&self, domain: &str) -> RemoteRun {
        Invocation::new(&self.home, domain, "s@x.test", &[&format!("r@{domain}")])
            .message(MSG)
            .netns(&self.scene.client)
            .run()
    }

    /// Puts the CA file `pem` (from the PKI) at control/tlshosts/<host>.pem.
    fn pin(&self, host: &str, pem: &str) {
        fs::copy(
            self.pki.path(pem),
            self.home
                .path()
                .join(format!("control/tlshosts/{host}.pem")),
        )
        .expect("copy pem");
    }

    fn unpin(&self, host: &str) {
        let _ = fs::remove_file(
            self.home
                .path()
                .join(format!("control/tlshosts/{host}.pem")),
        );
    }
}

/// Asserts a K report from `ip` and returns the number of `<=` lines in Exim's log.
fn expect_k(r: &RemoteRun, ip: &str) {
    let c = r.condensed();
    let want = format!("K{ip} accepted message.\nRemote host said: 250 OK id=");
    assert!(c.starts_with(want.as_bytes()), "{}", show(&r.output));
    r.records();
}

/// The last reception line of Exim's log.
fn last_reception(exim: &Exim) -> String {
    exim.mainlog()
        .lines()
        .rev()
        .find(|l| l.contains(" <= "))
        .unwrap_or_else(|| panic!("no reception in the log:\n{}", exim.mainlog()))
        .to_string()
}

#[test]
fn starttls_opportunistic_verified_refused_and_smtps() {
    let w = world();
    let opts = EximOptions {
        smtps_port: Some(465),
        ..w.tls_opts()
    };
    let exim = w.exim(A_TLS, opts);

    // opportunistic: STARTTLS offered, used, nothing checked
    expect_k(&w.run("tls.test"), A_TLS);
    let line = last_reception(&exim);
    assert!(line.contains("P=esmtps X=TLS1."), "{line}");
    // Exim logs SNI=… (log_selector +tls_sni) when a client sends one
    assert!(!line.contains("SNI="), "no SNI is sent: {line}");
    eprintln!("exim: {line}");

    // tlshosts/<MX>.pem with the issuing CA: verified delivery
    w.pin("mx.tls.test", "ca.pem");
    expect_k(&w.run("tls.test"), A_TLS);
    assert!(last_reception(&exim).contains("X=TLS1."));

    // a CA that did not issue the certificate
    w.pin("mx.tls.test", "other.pem");
    w.run("tls.test").expect(
        format!(
            "ZTLS unable to verify server with control/tlshosts/mx.tls.test.pem: \
             unable to get local issuer certificate; connected to {A_TLS}.\n\0"
        )
        .as_bytes(),
        b'Z',
    );
    // the server's own certificate listed in the file is trusted as is
    w.pin("mx.tls.test", "mx.pem");
    expect_k(&w.run("tls.test"), A_TLS);
    w.unpin("mx.tls.test");

    // a name the certificate does not carry
    w.pin("alias.tls.test", "ca.pem");
    w.run("wrong.test").expect(
        format!(
            "ZTLS unable to verify server alias.tls.test: certificate contains no matching \
             dNSNnames; connected to {A_TLS}.\n\0"
        )
        .as_bytes(),
        b'Z',
    );
    w.unpin("alias.tls.test");

    // notlshosts/<MX>: plaintext although STARTTLS is offered
    fs::write(w.home.path().join("control/notlshosts/mx.tls.test"), "").unwrap();
    expect_k(&w.run("tls.test"), A_TLS);
    let line = last_reception(&exim);
    assert!(
        line.contains("P=esmtp ") && !line.contains("X=TLS"),
        "{line}"
    );
    // exhaustivelist: only hosts with a .pem get TLS
    fs::remove_file(w.home.path().join("control/notlshosts/mx.tls.test")).unwrap();
    fs::write(w.home.path().join("control/tlshosts/exhaustivelist"), "").unwrap();
    expect_k(&w.run("tls.test"), A_TLS);
    assert!(!last_reception(&exim).contains("X=TLS"));
    w.pin("mx.tls.test", "ca.pem");
    expect_k(&w.run("tls.test"), A_TLS);
    assert!(last_reception(&exim).contains("X=TLS1."));
    fs::remove_file(w.home.path().join("control/tlshosts/exhaustivelist")).unwrap();

    // SMTPS: a route to port 465 speaks TLS from the first byte, verified by the same .pem
    w.home
        .write_control("smtproutes", "smtps.test:mx.tls.test:465\n");
    expect_k(&w.run("smtps.test"), A_TLS);
    let line = last_reception(&exim);
    assert!(line.contains("X=TLS1."), "{line}");
    w.home.remove_control("smtproutes");

    // tlsclientciphers: OpenSSL names are mapped; an unknown one is reported, not ignored
    w.home
        .write_control("tlsclientciphers", "TLS_AES_128_GCM_SHA256\n");
    expect_k(&w.run("tls.test"), A_TLS);
    assert!(
        last_reception(&exim).contains("AES_128_GCM"),
        "{}",
        last_reception(&exim)
    );
    w.home.write_control("tlsclientciphers", "HIGH:!aRSA\n");
    w.run("tls.test").expect(
        format!(
            "ZTLS error initializing ctx: unknown cipher !aRSA in control/tlsclientciphers; \
             connecting to {A_TLS}.\n\0"
        )
        .as_bytes(),
        b'Z',
    );
}

#[test]
fn pem_without_starttls_and_broken_handshakes() {
    let w = world();
    let _plain = w.exim(A_PLAIN, EximOptions::default());
    // no .pem: plaintext as stock
    expect_k(&w.run("plain.test"), A_PLAIN);
    // a .pem but the server offers no STARTTLS
    w.pin("plain.tls.test", "ca.pem");
    w.run("plain.test").expect(
        format!(
            "ZNo TLS achieved while control/tlshosts/plain.tls.test.pem exists; \
             connecting to {A_PLAIN}.\n\0"
        )
        .as_bytes(),
        b'Z',
    );

    // STARTTLS offered and accepted, then the connection is reset instead of a handshake
    let sink = SmtpSink::start(
        Some(&w.scene.servers),
        &format!("{A_BROKEN}:25"),
        Script {
            ehlo: Some(Reply::line("250-broken.tls.test\n250 STARTTLS")),
            starttls: Reply::ThenReset(b"220 go ahead\r\n".to_vec()),
            ..Script::default()
        },
    );
    w.pin("broken.tls.test", "ca.pem");
    let r = w.run("broken.test");
    let out = show(&r.output);
    assert!(
        r.output.starts_with(b"ZTLS connect failed: ")
            && r.output
                .ends_with(format!("; connected to {A_BROKEN}.\n\0").as_bytes()),
        "{out}"
    );
    assert_eq!(r.condensed()[0], b'Z');
    assert_eq!(sink.connections(), 1, "TLS required: no retry in clear");
    // opportunistic: the failed handshake is retried once in clear, and delivers
    w.unpin("broken.tls.test");
    let r = w.run("broken.test");
    r.expect(
        format!("r\0K{A_BROKEN} accepted message.\nRemote host said: 250 ok queued\n\0").as_bytes(),
        b'K',
    );
    assert_eq!(sink.connections(), 3);
    let sessions = sink.finished_sessions();
    let clear = sessions.iter().find(|s| s.dot).expect("the clear session");
    assert!(!String::from_utf8_lossy(&clear.received).contains("STARTTLS"));
}

#[test]
fn auth_plain_and_login_over_tls() {
    let w = world();
    let plain = w.exim(
        A_TLS,
        EximOptions {
            auth: vec!["PLAIN"],
            user: "u1",
            password: "p1",
            ..w.tls_opts()
        },
    );
    let login = w.exim(
        A_LOGIN,
        EximOptions {
            auth: vec!["LOGIN"],
            user: "u1",
            password: "p1",
            ..w.tls_opts()
        },
    );
    w.home.write_control(
        "smtproutes",
        "auth.test:mx.tls.test|u1|p1\nbad.test:mx.tls.test|u1|wrong\n\
         login.test:login.tls.test|u1|p1\nbadlogin.test:login.tls.test|u1|nope\n",
    );
    expect_k(&w.run("auth.test"), A_TLS);
    let line = last_reception(&plain);
    assert!(
        line.contains("P=esmtpsa X=TLS1.") && line.contains("A=plain:u1"),
        "{line}"
    );
    w.run("bad.test").expect(
        format!(
            "ZConnected to {A_TLS} but authentication was rejected (plain)..\n\
             Remote host said: 535 Incorrect authentication data\n\0"
        )
        .as_bytes(),
        b'Z',
    );
    expect_k(&w.run("login.test"), A_LOGIN);
    let line = last_reception(&login);
    assert!(
        line.contains("P=esmtpsa X=TLS1.") && line.contains("A=login:u1"),
        "{line}"
    );
    w.run("badlogin.test").expect(
        format!(
            "ZConnected to {A_LOGIN} but authentication was rejected (password)..\n\
             Remote host said: 535 Incorrect authentication data\n\0"
        )
        .as_bytes(),
        b'Z',
    );
    // without TLS the password is not sent
    fs::write(w.home.path().join("control/notlshosts/mx.tls.test"), "").unwrap();
    w.run("auth.test").expect(
        format!("ZConnected to {A_TLS} but refusing to authenticate without TLS.\n\0").as_bytes(),
        b'Z',
    );
    // authsenders: the sender's route and credentials replace smtproutes
    fs::remove_file(w.home.path().join("control/notlshosts/mx.tls.test")).unwrap();
    w.home.remove_control("smtproutes");
    w.home
        .write_control("authsenders", "@x.test:mx.tls.test|u1|p1\n");
    expect_k(&w.run("elsewhere.test"), A_TLS);
    assert!(last_reception(&plain).contains("A=plain:u1"));
}

#[test]
fn size_is_announced_when_offered() {
    let offered = Script {
        ehlo: Some(Reply::line("250-sink.test\n250-SIZE 1000000\n250 8BITMIME")),
        ..Script::default()
    };
    for (script, size) in [(offered, true), (Script::default(), false)] {
        let sink = SmtpSink::start(None, "127.0.0.1:0", script);
        let home = QmailHome::new();
        home.write_control("smtproutes", &format!(":127.0.0.1:{}\n", sink.port()));
        let r = Invocation::new(&home, "example.test", "s@x.test", &["r@example.test"])
            .message(MSG)
            .run();
        r.expect(
            b"r\0K127.0.0.1 accepted message.\nRemote host said: 250 ok queued\n\0",
            b'K',
        );
        let got = sink.one_session().received;
        let mail = if size {
            format!("MAIL FROM:<s@x.test> SIZE={}\r\n", MSG.len())
        } else {
            "MAIL FROM:<s@x.test>\r\n".to_string()
        };
        assert!(
            String::from_utf8_lossy(&got).contains(&mail),
            "{}",
            show(&got)
        );
    }
    // a real server refuses an announced size above its limit at MAIL: stock's text, D
    let w = world();
    let _exim = w.exim(
        A_PLAIN,
        EximOptions {
            size_limit: Some("20"),
            ..EximOptions::default()
        },
    );
    let r = w.run("plain.test");
    let out = show(&r.output);
    assert!(
        r.output.starts_with(
            format!("DConnected to {A_PLAIN} but sender was rejected.\nRemote host said: 552")
                .as_bytes()
        ),
        "{out}"
    );
}

/// Without a dNSName subjectAltName the first commonName is compared (as the TLS patch and
/// OpenSSL's host check do); without either, T9.
#[test]
fn common_name_fallback() {
    let w = world();
    let cn = w.pki.server("cn", "ca", "cn.tls.test", &[]);
    let nocn = w.pki.server("nocn", "ca", "", &[]);
    let _cn = w.exim(
        A_CN,
        EximOptions {
            tls: Some(cn),
            ..EximOptions::default()
        },
    );
    let _nocn = w.exim(
        A_NOCN,
        EximOptions {
            tls: Some(nocn),
            ..EximOptions::default()
        },
    );
    w.pin("cn.tls.test", "ca.pem");
    expect_k(&w.run("cn.test"), A_CN);
    w.pin("cnalias.tls.test", "ca.pem");
    w.run("cnwrong.test").expect(
        format!(
            "ZTLS unable to verify server cnalias.tls.test: received certificate for \
             cn.tls.test; connected to {A_CN}.\n\0"
        )
        .as_bytes(),
        b'Z',
    );
    w.pin("nocn.tls.test", "ca.pem");
    w.run("nocn.test").expect(
        format!(
            "ZTLS unable to verify server nocn.tls.test: certificate contains no valid \
             commonName; connected to {A_NOCN}.\n\0"
        )
        .as_bytes(),
        b'Z',
    );
}
