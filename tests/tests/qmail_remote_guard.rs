//! qmail-remote under the kernel guard: qmail-remote runs in the guarded cgroup inside the mail
//! host's netns (MailHost). A connect the guard refuses (ELOOP) must become perm_ambigmx
//! (byte-exact); a firewall's refusal (nftables reject/drop) must take the stock temporary path.
//! On kernels before 5.18 the guard refuses with EPERM: perm_ambigmx only for addresses in
//! qmail-remote's own ipme set, the temporary path otherwise.
//! Each test first shows the same delivery connects without the guard, so the refusal is the
//! guard's doing.

use guard_tests::dnsmasq::Dnsmasq;
use guard_tests::probe::ProbeResult;
use guard_tests::qmail_remote::{Invocation, QmailHome, RemoteRun};
use guard_tests::scene::{self, MORE_SINGLE, MORE_V4_MEMBER, MORE_V6_MEMBER, OTHER_V4};
use guard_tests::smtp_sink::{Script, SmtpSink};
use guard_tests::topology::HOST_V4;
use guard_tests::{Guard, MailHost};

const AMBIG: &[u8] = b"DSorry. Although I'm listed as a best-preference MX or A for that host,\n\
it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n\0";
const NOCONN: &[u8] = b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n\0";
const MSG: &[u8] = b"Subject: guard\n\nhi\n";

fn run(mh: &MailHost, home: &QmailHome, host: &str) -> RemoteRun {
    Invocation::new(home, host, "s@x.test", &[&format!("r@{host}")])
        .message(MSG)
        .netns(&mh.host)
        .cgroup(mh.cgroup.path())
        .run()
}

/// The connection died waiting for a greeting: the guard-probe listeners accept but never
/// speak SMTP. This is how "it really connected" looks.
fn died(ip: &str) -> Vec<u8> {
    format!("ZConnected to {ip} but connection died. (#4.4.2)\n\0").into_bytes()
}

fn accepted_at(mh: &MailHost, addr: &str) -> usize {
    mh.peer_listener
        .accepted()
        .iter()
        .filter(|a| a.local.contains(addr))
        .count()
}

#[test]
fn relay_to_a_moreipme_address_is_refused_by_the_kernel_as_ambigmx() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    // qmail-remote shares the guard's qmail home (same moreipme); relays skip the user-space
    // loop rule, so only the kernel can stop these
    let home = QmailHome::borrow(g.home());
    home.write_control("timeoutremote", "1\n");
    home.write_control(
        "smtproutes",
        &format!("v4.test:{MORE_V4_MEMBER}\nv6.test:[IPv6:{MORE_V6_MEMBER}]\n"),
    );
    run(&mh, &home, "v4.test").expect(&died(MORE_V4_MEMBER), b'Z');
    run(&mh, &home, "v6.test").expect(&died(MORE_V6_MEMBER), b'Z');
    let before = (
        accepted_at(&mh, MORE_V4_MEMBER),
        accepted_at(&mh, MORE_V6_MEMBER),
    );
    assert_eq!(before, (1, 1), "both relays reachable without the guard");

    g.attach(&mh.cgroup);
    run(&mh, &home, "v4.test").expect(AMBIG, b'D');
    run(&mh, &home, "v6.test").expect(AMBIG, b'D');
    assert_eq!(
        (
            accepted_at(&mh, MORE_V4_MEMBER),
            accepted_at(&mh, MORE_V6_MEMBER)
        ),
        before
    );
    // the refusal is not a timeout: tcpto untouched
    assert!(home.tcpto().iter().all(|&b| b == 0));
}

#[test]
fn mx_at_a_nat_address_known_only_to_the_guard_is_refused_as_ambigmx() {
    let mh = scene::mail_host();
    // a local port forward: the public address leads back to this host
    mh.host.nft(&format!(
        "table ip qrnat {{\n chain out {{\n  type nat hook output priority -100; policy accept;\n  \
         ip daddr {MORE_SINGLE} tcp dport 25 dnat to {HOST_V4}:25\n }}\n}}\n"
    ));
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    let _dns = Dnsmasq::start(
        &mh.host,
        &[
            "mx-host=nat.test,mx.nat.test,10",
            &format!("host-record=mx.nat.test,{MORE_SINGLE}"),
        ],
    );
    // qmail-remote's own home lacks the moreipme entry (user space does not know the NAT
    // address), so the MX passes the loop rule and the connect loops back to this host
    let home = QmailHome::new();
    home.write_control("timeoutremote", "1\n");
    run(&mh, &home, "nat.test").expect(&died(MORE_SINGLE), b'Z');
    let looped = mh.host_listener.accepted().len();
    assert_eq!(
        looped, 1,
        "without the guard the delivery loops back to the host itself"
    );

    g.attach(&mh.cgroup);
    if g.refused() == ProbeResult::REFUSED {
        run(&mh, &home, "nat.test").expect(AMBIG, b'D');
    } else {
        // EPERM (kernel < 5.18) is also a firewall's errno, and this home does not know the
        // address: a deferral, retried later, never a bounce and never a loop.
        assert_eq!(g.refused(), ProbeResult::Errno(libc::EPERM));
        run(&mh, &home, "nat.test").expect(NOCONN, b'Z');
    }
    assert_eq!(mh.host_listener.accepted().len(), looped, "no new loop");

    // with the entry in qmail-remote's moreipme too, user space stops it before any connect
    home.write_control("moreipme", &format!("{MORE_SINGLE}\n"));
    run(&mh, &home, "nat.test").expect(AMBIG, b'D');
    assert_eq!(mh.host_listener.accepted().len(), looped);
}

/// The guard's refusal means what an ipme address means in qmail's MX rule: that MX and every
/// MX of equal or worse preference are "me". Only without a better MX is that perm_ambigmx; a
/// refused backup MX leaves the better MX's outcome (here: no connection, so Z).
#[test]
fn refused_backup_mx_defers_and_refused_best_mx_bounces() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    // the better MX is down: connections to it are refused
    mh.host.nft(&format!(
        "table inet qrdown {{\n chain out {{\n  type filter hook output priority 0;\n  \
         ip daddr {OTHER_V4} tcp dport 25 reject with tcp reset\n }}\n}}\n"
    ));
    let _dns = Dnsmasq::start(
        &mh.host,
        &[
            "mx-host=bk.test,down.bk.test,10",
            "mx-host=bk.test,mx.loop.test,20",
            "mx-host=best.test,mx.loop.test,10",
            "mx-host=best.test,down.bk.test,20",
            "mx-host=tie.test,mx.loop.test,10",
            "mx-host=tie.test,down.bk.test,10",
            &format!("host-record=down.bk.test,{OTHER_V4}"),
            &format!("host-record=mx.loop.test,{MORE_SINGLE}"),
        ],
    );
    // qmail-remote's own home has no moreipme: only the guard knows mx.loop.test is this host
    let home = QmailHome::new();
    home.write_control("timeoutremote", "1\n");
    run(&mh, &home, "bk.test").expect(&died(MORE_SINGLE), b'Z');
    let reached = accepted_at(&mh, MORE_SINGLE);
    assert_eq!(reached, 1, "without the guard the backup MX is reached");

    g.attach(&mh.cgroup);
    run(&mh, &home, "bk.test").expect(NOCONN, b'Z');
    run(&mh, &home, "best.test").expect(AMBIG, b'D');
    // tied with the best preference is "best" too, whichever order the tie-break picks
    for _ in 0..4 {
        run(&mh, &home, "tie.test").expect(AMBIG, b'D');
    }
    assert_eq!(accepted_at(&mh, MORE_SINGLE), reached, "no new loop");
    assert_eq!(accepted_at(&mh, OTHER_V4), 0);

    // the same verdicts as with the address in qmail-remote's moreipme (stock's rule)
    home.write_control("moreipme", &format!("{MORE_SINGLE}\n"));
    run(&mh, &home, "bk.test").expect(NOCONN, b'Z');
    run(&mh, &home, "best.test").expect(AMBIG, b'D');
    run(&mh, &home, "tie.test").expect(AMBIG, b'D');
    // neither the refusals nor the guard counted as timeouts
    assert!(home.tcpto().iter().all(|&b| b == 0));
}

#[test]
fn firewall_reject_and_drop_take_the_stock_temporary_path() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    scene::write_control(&g);
    g.attach(&mh.cgroup);
    let sink = SmtpSink::start(
        Some(&mh.peer),
        &format!("{OTHER_V4}:2600"),
        Script::default(),
    );
    let home = QmailHome::new();
    home.write_control(
        "smtproutes",
        &format!("ok.test:{OTHER_V4}:2600\nfw.test:{OTHER_V4}\n"),
    );
    // a dropped SYN is retried by the kernel until our connect timeout
    home.write_control("timeoutconnect", "1\n");
    // the guard lets other hosts through
    let r = run(&mh, &home, "ok.test");
    r.expect(
        format!("r\0K{OTHER_V4} accepted message.\nRemote host said: 250 ok queued\n\0").as_bytes(),
        b'K',
    );
    assert_eq!(sink.connections(), 1);
    for verdict in ["reject", "drop"] {
        mh.host.nft(&format!(
            "table inet qrfw {{\n chain out {{\n  type filter hook output priority 0;\n  \
             ip daddr {OTHER_V4} tcp dport 25 {verdict}\n }}\n}}\n"
        ));
        let r = run(&mh, &home, "fw.test");
        r.expect(NOCONN, b'Z');
        assert_eq!(
            r.condensed()[0],
            b'Z',
            "a firewall must never make mail bounce ({verdict})"
        );
        // reject is an error (no tcpto count), drop is a timeout (counted, stock tcpto rules)
        let count = home.tcpto()[4];
        assert_eq!(
            count,
            u8::from(verdict == "drop"),
            "tcpto count after {verdict}"
        );
        mh.host.run_ok(&["nft", "delete", "table", "inet", "qrfw"]);
    }
    assert_eq!(accepted_at(&mh, OTHER_V4), 0);
}
