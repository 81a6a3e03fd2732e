//! qmail-remote with real DNS: a dnsmasq in the sending host's netns (/etc/netns/NAME/
//! resolv.conf), mail servers in a second netns (MxScene). Checks MX order and ties, A
//! fallback, AAAA and IPv6 literals, NXDOMAIN / SERVFAIL / no data, the loop rule (our own
//! address as MX → perm_ambigmx without a connection; backup MX → only better MXs), and
//! timeoutconnect with the tcpto table. Runs are made qmail-rspawn style (uid nobody, fd 1+2
//! one pipe) inside the client netns.

use std::time::Duration;

use guard_tests::dnsmasq::Dnsmasq;
use guard_tests::mx_scene::{CLIENT_V4, MxScene};
use guard_tests::qmail_remote::{Invocation, QmailHome, RemoteRun};
use guard_tests::smtp_sink::{Script, SmtpSink};

const MSG: &[u8] = b"Subject: dns\n\nhi\n";

fn run(scene: &MxScene, home: &QmailHome, host: &str) -> RemoteRun {
    Invocation::new(home, host, "s@x.test", &[&format!("r@{host}")])
        .message(MSG)
        .netns(&scene.client)
        .run()
}

fn sink_at(scene: &MxScene, addr: &str) -> SmtpSink {
    let a = if addr.contains(':') {
        format!("[{addr}]:25")
    } else {
        format!("{addr}:25")
    };
    SmtpSink::start(Some(&scene.servers), &a, Script::default())
}

fn accepted(ip: &str) -> Vec<u8> {
    format!("r\0K{ip} accepted message.\nRemote host said: 250 ok queued\n\0").into_bytes()
}

#[test]
fn mx_order_lowest_preference_first_and_ties_random() {
    let scene = MxScene::new(&[
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
    ]);
    let _dns = Dnsmasq::start(
        &scene.client,
        &[
            "mx-host=tie.test,a.tie.test,10",
            "mx-host=tie.test,b.tie.test,10",
            "mx-host=tie.test,c.tie.test,20",
            "host-record=a.tie.test,198.51.100.1",
            "host-record=b.tie.test,198.51.100.2",
            "host-record=c.tie.test,198.51.100.3",
            "mx-host=order.test,dead.order.test,10",
            "mx-host=order.test,live.order.test,20",
            "host-record=dead.order.test,198.51.100.4",
            "host-record=live.order.test,198.51.100.3",
        ],
    );
    let (a, b, c) = (
        sink_at(&scene, "198.51.100.1"),
        sink_at(&scene, "198.51.100.2"),
        sink_at(&scene, "198.51.100.3"),
    );
    let home = QmailHome::new();
    for _ in 0..20 {
        let r = run(&scene, &home, "tie.test");
        assert!(r.condensed().starts_with(b"K198.51.100."), "{}", r.show());
    }
    let (na, nb) = (a.connections(), b.connections());
    assert_eq!(na + nb, 20);
    assert!(
        na > 0 && nb > 0,
        "ties between equal preferences must be spread: a={na} b={nb}"
    );
    assert_eq!(
        c.connections(),
        0,
        "a worse MX is never tried while a better one answers"
    );
    // the best MX refuses (nothing listens on 198.51.100.4:25): the next preference is tried
    let r = run(&scene, &home, "order.test");
    r.expect(&accepted("198.51.100.3"), b'K');
    assert_eq!(c.connections(), 1);
}

#[test]
fn a_fallback_aaaa_and_ipv6_literals() {
    let scene = MxScene::new(&[
        "198.51.100.6",
        "2001:db8:2::7",
        "198.51.100.8",
        "2001:db8:2::8",
    ]);
    let _dns = Dnsmasq::start(
        &scene.client,
        &[
            "host-record=nomx.test,198.51.100.6",
            "mx-host=v6only.test,mx6.v6only.test,10",
            "host-record=mx6.v6only.test,2001:db8:2::7",
            "host-record=dual.test,198.51.100.8,2001:db8:2::8",
        ],
    );
    let s6 = sink_at(&scene, "198.51.100.6");
    let v6 = sink_at(&scene, "2001:db8:2::7");
    let (d4, d6) = (
        sink_at(&scene, "198.51.100.8"),
        sink_at(&scene, "2001:db8:2::8"),
    );
    let home = QmailHome::new();
    // no MX: the host's own address, preference 0
    run(&scene, &home, "nomx.test").expect(&accepted("198.51.100.6"), b'K');
    assert_eq!(s6.connections(), 1);
    // an MX with only an AAAA record (stock: perm_nomx)
    run(&scene, &home, "v6only.test").expect(&accepted("2001:db8:2::7"), b'K');
    // both families within one preference: IPv4 first
    run(&scene, &home, "dual.test").expect(&accepted("198.51.100.8"), b'K');
    assert_eq!((d4.connections(), d6.connections()), (1, 0));
    // IPv6 literal, no DNS
    run(&scene, &home, "[IPv6:2001:db8:2::7]").expect(&accepted("2001:db8:2::7"), b'K');
    assert_eq!(v6.connections(), 2);
    // IPv6 off: no AAAA lookups, v6 addresses unusable
    home.write_control("remoteipv6", "0\n");
    run(&scene, &home, "v6only.test").expect(
        b"DSorry, I couldn't find a mail exchanger or IP address. (#5.4.4)\n\0",
        b'D',
    );
    assert_eq!(v6.connections(), 2);
}

#[test]
fn nxdomain_servfail_and_no_data() {
    let scene = MxScene::new(&[]);
    let _dns = Dnsmasq::start(
        &scene.client,
        &[
            "txt-record=nodata.test,\"only text\"",
            "mx-host=noaddr.test,gone.noaddr.test,10",
            "mx-host=softmx.test,mx.servfail.test,10",
        ],
    );
    let home = QmailHome::new();
    // NXDOMAIN for MX, then for A: perm_dns naming the host
    run(&scene, &home, "nx.test").expect(
        b"DSorry, I couldn't find any host named nx.test. (#5.1.2)\n\0",
        b'D',
    );
    // unprintable bytes are shown as '?'
    let r = Invocation::new(&home, "", "", &[])
        .raw_args(&[b"b\xe4d.test", b"s@x.test", b"r@b\xe4d.test"])
        .message(MSG)
        .netns(&scene.client)
        .run();
    r.expect(
        b"DSorry, I couldn't find any host named b?d.test. (#5.1.2)\n\0",
        b'D',
    );
    // SERVFAIL: temporary
    run(&scene, &home, "x.servfail.test").expect(
        b"ZSorry, I couldn't find any host by that name. (#4.1.2)\n\0",
        b'Z',
    );
    // the name exists without MX or address records: no data for both → perm_dns
    run(&scene, &home, "nodata.test").expect(
        b"DSorry, I couldn't find any host named nodata.test. (#5.1.2)\n\0",
        b'D',
    );
    // an MX whose exchange does not exist: no address at all → perm_nomx
    run(&scene, &home, "noaddr.test").expect(
        b"DSorry, I couldn't find a mail exchanger or IP address. (#5.4.4)\n\0",
        b'D',
    );
    // an MX whose exchange lookup fails temporarily and nothing else: temp_dns
    run(&scene, &home, "softmx.test").expect(
        b"ZSorry, I couldn't find any host by that name. (#4.1.2)\n\0",
        b'Z',
    );
}

const AMBIG: &[u8] = b"DSorry. Although I'm listed as a best-preference MX or A for that host,\n\
it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n\0";

#[test]
fn our_own_address_as_best_mx_is_ambiguous_without_connecting() {
    let scene = MxScene::new(&["198.51.100.20"]);
    let _dns = Dnsmasq::start(
        &scene.client,
        &[
            "mx-host=self.test,me.self.test,10",
            &format!("host-record=me.self.test,{CLIENT_V4}"),
            "mx-host=tied.test,me.self.test,10",
            "mx-host=tied.test,other.tied.test,10",
            "host-record=other.tied.test,198.51.100.20",
            &format!("host-record=alias.test,{CLIENT_V4}"),
        ],
    );
    // a server on our own address that must never be contacted
    let me = SmtpSink::start(
        Some(&scene.client),
        &format!("{CLIENT_V4}:25"),
        Script::default(),
    );
    let other = sink_at(&scene, "198.51.100.20");
    let home = QmailHome::new();
    run(&scene, &home, "self.test").expect(AMBIG, b'D');
    // tied with another MX: still ambiguous (never deliver to a peer)
    run(&scene, &home, "tied.test").expect(AMBIG, b'D');
    // no MX, the A record is us
    run(&scene, &home, "alias.test").expect(AMBIG, b'D');
    assert_eq!((me.connections(), other.connections()), (0, 0));
}

#[test]
fn backup_mx_tries_only_strictly_better_mxs() {
    let scene = MxScene::new(&["198.51.100.10", "198.51.100.30", "198.51.100.11"]);
    let _dns = Dnsmasq::start(
        &scene.client,
        &[
            "mx-host=backup.test,best.backup.test,10",
            "mx-host=backup.test,me.backup.test,20",
            "mx-host=backup.test,worse.backup.test,30",
            "host-record=best.backup.test,198.51.100.10",
            &format!("host-record=me.backup.test,{CLIENT_V4}"),
            "host-record=worse.backup.test,198.51.100.30",
            "mx-host=down.test,best.down.test,10",
            "mx-host=down.test,me.backup.test,20",
            "mx-host=down.test,worse.backup.test,30",
            "host-record=best.down.test,198.51.100.11",
        ],
    );
    let best = sink_at(&scene, "198.51.100.10");
    let worse = sink_at(&scene, "198.51.100.30");
    let home = QmailHome::new();
    run(&scene, &home, "backup.test").expect(&accepted("198.51.100.10"), b'K');
    // the better MX is down (refuses): defer, never fall through to ourselves or worse
    run(&scene, &home, "down.test").expect(
        b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n\0",
        b'Z',
    );
    assert_eq!((best.connections(), worse.connections()), (1, 0));
}

#[test]
fn timeoutconnect_and_the_tcpto_table() {
    let scene = MxScene::new(&["198.51.100.40", "2001:db8:2::40"]);
    // SYNs to these addresses vanish: a connect can only time out
    scene.servers.nft(
        "table inet qrdrop {\n counter syn40 {}\n chain input {\n  type filter hook input priority 0;\n  \
         ip daddr 198.51.100.40 tcp dport 25 counter name syn40 drop\n  \
         ip6 daddr 2001:db8:2::40 tcp dport 25 drop\n }\n}\n",
    );
    // SYNs that reached 198.51.100.40 (the first and every retransmission)
    let syns = || {
        let out = scene
            .servers
            .run_ok(&["nft", "list", "counter", "inet", "qrdrop", "syn40"]);
        let n = out
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .unwrap_or_else(|| panic!("no packet count in `nft list counter`: {out}"));
        n.parse::<u64>()
            .unwrap_or_else(|e| panic!("packet count {n:?}: {e}"))
    };
    let _dns = Dnsmasq::start(
        &scene.client,
        &[
            "host-record=slow.test,198.51.100.40",
            "host-record=slow6.test,2001:db8:2::40",
        ],
    );
    let home = QmailHome::new();
    home.write_control("timeoutconnect", "1\n");
    let noconn: &[u8] = b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n\0";
    let r = run(&scene, &home, "slow.test");
    r.expect(noconn, b'Z');
    assert!(r.elapsed >= Duration::from_millis(900), "{:?}", r.elapsed);
    let t = home.tcpto();
    assert_eq!(
        &t[..5],
        &[198, 51, 100, 40, 1],
        "first timeout recorded in qmail's format"
    );
    let when = u32::from_le_bytes([t[8], t[9], t[10], t[11]]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    assert!(
        now.abs_diff(when) < 30,
        "time of the error: {when} vs {now}"
    );
    // within 120 s a second timeout does not count again
    run(&scene, &home, "slow.test").expect(noconn, b'Z');
    assert_eq!(home.tcpto()[4], 1);
    // two errors, the last one recent: the address is skipped without a connect attempt
    let mut t = home.tcpto();
    t[4] = 2;
    std::fs::write(home.path().join("queue/lock/tcpto"), &t).unwrap();
    let before = syns();
    assert!(
        before > 0,
        "the timed-out connects sent no SYN to the address"
    );
    run(&scene, &home, "slow.test").expect(noconn, b'Z');
    assert_eq!(
        syns(),
        before,
        "skipped address was tried (a SYN reached it)"
    );
    // IPv6 timeouts go to tcpto6 (32-byte records), the stock file stays IPv4-only
    run(&scene, &home, "slow6.test").expect(noconn, b'Z');
    let t6 = std::fs::read(home.path().join("queue/lock/tcpto6")).unwrap();
    let a: std::net::Ipv6Addr = "2001:db8:2::40".parse().unwrap();
    assert_eq!(&t6[..16], &a.octets());
    assert_eq!(t6[16], 1);
}
