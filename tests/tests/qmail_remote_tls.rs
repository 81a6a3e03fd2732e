//! STARTTLS, SMTPS, AUTH and SIZE (docs/qmail-remote-tls.md) against real servers: Exim with a
//! certificate from a CA the test makes, dnsmasq for the MX names, qmail-remote in the client
//! netns of an MxScene. Report texts are checked byte for byte; Exim's log shows what really
//! happened on the wire (P=esmtps X=TLS…, A=plain:u1).

use std::fs;
use std::path::PathBuf;

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
/// Exim with STARTTLS that asks for a client certificate.
const A_CCERT: &str = "203.0.113.31";
/// Exim with STARTTLS and AUTH PLAIN CRAM-MD5.
const A_CRAM: &str = "203.0.113.32";
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
    let scene = MxScene::new(&[
        A_TLS, A_PLAIN, A_LOGIN, A_BROKEN, A_CN, A_NOCN, A_CCERT, A_CRAM,
    ]);
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
            "mx-host=ccert.test,ccert.tls.test,10",
            &format!("host-record=ccert.tls.test,{A_CCERT}"),
            "mx-host=cram.test,cram.tls.test,10",
            &format!("host-record=cram.tls.test,{A_CRAM}"),
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

    /// Exim with STARTTLS offering the SASL mechanisms `auth` for the account u1 / p1.
    fn auth_exim(&self, addr: &str, auth: Vec<&'static str>) -> Exim {
        self.exim(
            addr,
            EximOptions {
                auth,
                user: "u1",
                password: "p1",
                ..self.tls_opts()
            },
        )
    }

    /// The file `control/<rel>` of the qmail home.
    fn control(&self, rel: &str) -> PathBuf {
        self.home.path().join("control").join(rel)
    }

    /// Creates (`true`) or removes control/notlshosts/<host>.
    fn notls(&self, host: &str, on: bool) {
        let f = self.control(&format!("notlshosts/{host}"));
        if on {
            fs::write(&f, "").expect("write notlshosts file");
        } else {
            fs::remove_file(&f).expect("remove notlshosts file");
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
            self.control(&format!("tlshosts/{host}.pem")),
        )
        .expect("copy pem");
    }

    fn unpin(&self, host: &str) {
        let _ = fs::remove_file(self.control(&format!("tlshosts/{host}.pem")));
    }
}

/// Asserts the output is exactly the one Z record `text` (NUL added).
fn expect_z(r: &RemoteRun, text: &str) {
    r.expect(format!("{text}\0").as_bytes(), b'Z');
}

/// Asserts a K report from `ip`.
fn expect_k(r: &RemoteRun, ip: &str) {
    let c = r.condensed();
    let want = format!("K{ip} accepted message.\nRemote host said: 250 OK id=");
    assert!(c.starts_with(want.as_bytes()), "{}", show(&r.output));
    r.records();
}

/// Asserts Exim's last reception was authenticated as u1 by its `authenticator`, with or
/// without TLS.
fn expect_auth(exim: &Exim, authenticator: &str, tls: bool) {
    let line = last_reception(exim);
    let proto = if tls {
        "P=esmtpsa X=TLS1."
    } else {
        "P=esmtpa "
    };
    assert!(
        line.contains(proto) && line.contains(&format!(" A={authenticator}:u1 ")),
        "{line}"
    );
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
    expect_z(
        &w.run("tls.test"),
        &format!(
            "ZTLS unable to verify server with control/tlshosts/mx.tls.test.pem: \
             unable to get local issuer certificate; connected to {A_TLS}.\n"
        ),
    );
    // the server's own certificate listed in the file is trusted as is
    w.pin("mx.tls.test", "mx.pem");
    expect_k(&w.run("tls.test"), A_TLS);
    w.unpin("mx.tls.test");

    // a name the certificate does not carry
    w.pin("alias.tls.test", "ca.pem");
    expect_z(
        &w.run("wrong.test"),
        &format!(
            "ZTLS unable to verify server alias.tls.test: certificate contains no matching \
             dNSNnames; connected to {A_TLS}.\n"
        ),
    );
    w.unpin("alias.tls.test");

    // notlshosts/<MX>: plaintext although STARTTLS is offered
    w.notls("mx.tls.test", true);
    expect_k(&w.run("tls.test"), A_TLS);
    let line = last_reception(&exim);
    assert!(
        line.contains("P=esmtp ") && !line.contains("X=TLS"),
        "{line}"
    );
    // exhaustivelist: only hosts with a .pem get TLS
    w.notls("mx.tls.test", false);
    fs::write(w.control("tlshosts/exhaustivelist"), "").unwrap();
    expect_k(&w.run("tls.test"), A_TLS);
    assert!(!last_reception(&exim).contains("X=TLS"));
    w.pin("mx.tls.test", "ca.pem");
    expect_k(&w.run("tls.test"), A_TLS);
    assert!(last_reception(&exim).contains("X=TLS1."));
    fs::remove_file(w.control("tlshosts/exhaustivelist")).unwrap();

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
    expect_z(
        &w.run("tls.test"),
        &format!(
            "ZTLS error initializing ctx: unknown cipher !aRSA in control/tlsclientciphers; \
             connecting to {A_TLS}.\n"
        ),
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
    expect_z(
        &w.run("plain.test"),
        &format!(
            "ZNo TLS achieved while control/tlshosts/plain.tls.test.pem exists; \
             connecting to {A_PLAIN}.\n"
        ),
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
    let plain = w.auth_exim(A_TLS, vec!["PLAIN"]);
    let login = w.auth_exim(A_LOGIN, vec!["LOGIN"]);
    w.home.write_control(
        "smtproutes",
        "auth.test:mx.tls.test|u1|p1\nbad.test:mx.tls.test|u1|wrong\n\
         login.test:login.tls.test|u1|p1\nbadlogin.test:login.tls.test|u1|nope\n",
    );
    expect_k(&w.run("auth.test"), A_TLS);
    expect_auth(&plain, "plain", true);
    expect_z(
        &w.run("bad.test"),
        &format!(
            "ZConnected to {A_TLS} but authentication was rejected (plain)..\n\
             Remote host said: 535 Incorrect authentication data\n"
        ),
    );
    expect_k(&w.run("login.test"), A_LOGIN);
    expect_auth(&login, "login", true);
    expect_z(
        &w.run("badlogin.test"),
        &format!(
            "ZConnected to {A_LOGIN} but authentication was rejected (password)..\n\
             Remote host said: 535 Incorrect authentication data\n"
        ),
    );
    // without TLS the password is not sent
    w.notls("mx.tls.test", true);
    expect_z(
        &w.run("auth.test"),
        &format!("ZConnected to {A_TLS} but refusing to authenticate without TLS.\n"),
    );
    // authsenders: the sender's route and credentials replace smtproutes
    w.notls("mx.tls.test", false);
    w.home.remove_control("smtproutes");
    w.home
        .write_control("authsenders", "@x.test:mx.tls.test|u1|p1\n");
    expect_k(&w.run("elsewhere.test"), A_TLS);
    expect_auth(&plain, "plain", true);
}

/// CRAM-MD5 is chosen over PLAIN when both are offered; it proves the password without sending
/// it, so it is used without TLS too; a wrong password is the AUTH patch's text.
#[test]
fn auth_cram_md5() {
    let w = world();
    let exim = w.auth_exim(A_CRAM, vec!["PLAIN", "CRAM-MD5"]);
    w.home.write_control(
        "smtproutes",
        "cram.test:cram.tls.test|u1|p1\nbadcram.test:cram.tls.test|u1|wrong\n",
    );
    expect_k(&w.run("cram.test"), A_CRAM);
    expect_auth(&exim, "cram_md5", true);
    expect_z(
        &w.run("badcram.test"),
        &format!(
            "ZConnected to {A_CRAM} but authentication was rejected (username+digest)..\n\
             Remote host said: 535 Incorrect authentication data\n"
        ),
    );
    let log = exim.mainlog();
    assert!(
        log.contains("cram_md5 authenticator failed") && log.contains("(set_id=u1)"),
        "{log}"
    );
    w.notls("cram.tls.test", true);
    expect_k(&w.run("cram.test"), A_CRAM);
    expect_auth(&exim, "cram_md5", false);
}

/// control/clientcert.pem is presented when the server asks and verifies with the test CA
/// (Exim logs CV=yes and the subject); a missing, broken or unreadable file means no client
/// certificate and TLS goes on (docs/qmail-remote-tls.md §2.3).
#[test]
fn client_certificate() {
    let w = world();
    let both = w.pki.client("client", "ca", "client.tls.test");
    w.pki.client("other", "ca", "other.tls.test");
    let asking = EximOptions {
        client_ca: Some(w.pki.path("ca.pem")),
        ..w.tls_opts()
    };
    let exim = w.exim(A_CCERT, asking.clone());
    let file = w.control("clientcert.pem");
    let presented = |exim: &Exim| {
        let line = last_reception(exim);
        assert!(line.contains("P=esmtps X=TLS1."), "{line}");
        if line.contains("CV=yes") && line.contains("DN=\"CN=client.tls.test\"") {
            true
        } else {
            assert!(line.contains("CV=no") && !line.contains("DN="), "{line}");
            false
        }
    };

    expect_k(&w.run("ccert.test"), A_CCERT);
    assert!(!presented(&exim), "no file, no certificate");
    fs::copy(&both, &file).expect("copy clientcert.pem");
    expect_k(&w.run("ccert.test"), A_CCERT);
    assert!(presented(&exim), "the certificate is shown and verifies");
    // the key first works too
    let (cert, key) = (w.pki.path("client.pem"), w.pki.path("client.key"));
    let read = |p: &PathBuf| fs::read(p).expect("read pki file");
    fs::write(&file, [read(&key), read(&cert)].concat()).expect("write clientcert.pem");
    expect_k(&w.run("ccert.test"), A_CCERT);
    assert!(presented(&exim), "key before certificate");

    let whole = read(&both);
    let broken: [(&str, Vec<u8>); 5] = [
        ("certificate without key", read(&cert)),
        ("key without certificate", read(&key)),
        (
            "key of another certificate",
            [read(&cert), read(&w.pki.path("other.key"))].concat(),
        ),
        ("cut short", whole[..whole.len() / 2].to_vec()),
        ("not PEM", b"clientcert\n".to_vec()),
    ];
    for (what, bytes) in broken {
        fs::write(&file, bytes).expect("write clientcert.pem");
        expect_k(&w.run("ccert.test"), A_CCERT);
        assert!(!presented(&exim), "{what}: no certificate, TLS goes on");
    }
    // unreadable (root reads any mode, so a directory)
    fs::remove_file(&file).expect("remove clientcert.pem");
    fs::create_dir(&file).expect("mkdir clientcert.pem");
    expect_k(&w.run("ccert.test"), A_CCERT);
    assert!(!presented(&exim), "unreadable: no certificate, TLS goes on");
    fs::remove_dir(&file).expect("rmdir clientcert.pem");

    // a server that insists on a verified certificate
    drop(exim);
    let exim = w.exim(
        A_CCERT,
        EximOptions {
            require_client_cert: true,
            ..asking
        },
    );
    fs::copy(&both, &file).expect("copy clientcert.pem");
    expect_k(&w.run("ccert.test"), A_CCERT);
    assert!(presented(&exim));
    // without a usable certificate TLS 1.3 completes on the client's side and the server's
    // alert arrives with the reply to EHLO: the session died, Z (the alert's words are
    // rustls', like the patch's OpenSSL error strings, not part of the contract)
    let received = exim.mainlog().matches(" <= ").count();
    fs::write(&file, read(&cert)).expect("write clientcert.pem");
    let r = w.run("ccert.test");
    let prefix = format!("ZConnected to {A_CCERT} but connection died. ");
    assert!(
        r.output.starts_with(prefix.as_bytes())
            && r.output.ends_with(b" (#4.4.2)\n\0")
            && !r.show().contains("Possible duplicate"),
        "{}",
        r.show()
    );
    assert_eq!(r.condensed()[0], b'Z', "{}", r.show());
    assert_eq!(exim.mainlog().matches(" <= ").count(), received);
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
    expect_z(
        &w.run("cnwrong.test"),
        &format!(
            "ZTLS unable to verify server cnalias.tls.test: received certificate for \
             cn.tls.test; connected to {A_CN}.\n"
        ),
    );
    w.pin("nocn.tls.test", "ca.pem");
    expect_z(
        &w.run("nocn.test"),
        &format!(
            "ZTLS unable to verify server nocn.tls.test: certificate contains no valid \
             commonName; connected to {A_NOCN}.\n"
        ),
    );
}
