//! A delivery to a real MTA: Exim (Debian's exim4-daemon-light, the private unpacked copy, not
//! an installed MTA) in its own netns, reached through smtproutes. The message must arrive byte
//! for byte (Exim only prepends its Received header).

use guard_tests::Netns;
use guard_tests::mta::Exim;
use guard_tests::qmail_remote::{Invocation, QmailHome};
use guard_tests::rspawn::show;
use guard_tests::unique::unique_name;

#[test]
fn delivery_to_exim_arrives_byte_exact() {
    let ns = Netns::new(&unique_name());
    let exim = Exim::start(&ns, "127.0.0.1", 25);
    let home = QmailHome::new();
    home.write_control("smtproutes", ":127.0.0.1\n");
    let mut msg = b"Received: (qmail 1 invoked by uid 0); 1 Jan 2026 00:00:00 -0000\n\
Message-ID: <qmail-remote-test@example.test>\n\
Date: Thu, 01 Jan 2026 00:00:00 +0000\n\
From: Sender <s@x.test>\n\
To: r@example.test\n\
Subject: byte exact\n\
MIME-Version: 1.0\n\
Content-Type: text/plain; charset=iso-8859-1\n\
Content-Transfer-Encoding: 8bit\n\
\n\
.a line starting with a dot\n\
..two dots\n\
.\n\
\tindented\twith tabs  and trailing spaces  \n\
8-bit: \xe4\xf6\xfc \xff\n\
\n"
    .to_vec();
    msg.extend_from_slice(&b"long line ".repeat(90));
    msg.extend_from_slice(b"\nlast line\n");
    let r = Invocation::new(&home, "example.test", "s@x.test", &["r@example.test"])
        .message(&msg)
        .netns(&ns)
        .run();
    let c = r.condensed();
    assert!(
        c.starts_with(b"K127.0.0.1 accepted message.\nRemote host said: 250 OK id="),
        "{}",
        show(&c)
    );
    r.records();
    let got = exim.delivered();
    assert!(got.starts_with(b"Received: by exim test"), "{}", show(&got));
    assert!(
        got.ends_with(&msg),
        "message changed in transit:\n{}",
        show(&got)
    );
    // exactly one header line (two physical lines) was added
    let added = &got[..got.len() - msg.len()];
    assert_eq!(
        added.iter().filter(|&&b| b == b'\n').count(),
        2,
        "{}",
        show(added)
    );
}
