//! The loop qmail-guard exists for: an address that no interface holds but that NAT leads
//! back to the mail host. The connect hook sees the address before NAT, so the guard refuses
//! it only when control/moreipme lists it; without that entry the connect really loops back
//! to the mail host's own listener (which the tests observe).

use guard_tests::probe::ProbeResult;
use guard_tests::scene;
use guard_tests::topology::{HOST_V4, MailHost, PEER_DEV, PEER_V4};
use guard_tests::{Guard, Netns};

/// The public address that is forwarded to the mail host.
const PUBLIC: &str = "198.51.100.25";
const SMTP: u16 = 25;

#[derive(Clone, Copy, Debug)]
enum Nat {
    /// DNAT in the mail host's own output hook (a local port forward).
    Output,
    /// A router (the peer netns) DNATs the public address back to the mail host, with
    /// hairpin masquerading so the reply goes back through it (docs/architecture.md).
    Router,
}

fn install(nat: Nat, mh: &MailHost) {
    match nat {
        Nat::Output => mh.host.nft(&format!(
            "table ip qgt_nat {{
                chain out {{
                    type nat hook output priority -100; policy accept;
                    ip daddr {PUBLIC} tcp dport {SMTP} dnat to {HOST_V4}:{SMTP}
                }}
            }}"
        )),
        Nat::Router => {
            router(&mh.peer);
            mh.peer.nft(&format!(
                "table ip qgt_nat {{
                    chain pre {{
                        type nat hook prerouting priority -100; policy accept;
                        ip daddr {PUBLIC} tcp dport {SMTP} dnat to {HOST_V4}:{SMTP}
                    }}
                    chain post {{
                        type nat hook postrouting priority 100; policy accept;
                        ip daddr {HOST_V4} tcp dport {SMTP} oifname \"{PEER_DEV}\" iifname \"{PEER_DEV}\" masquerade
                    }}
                }}"
            ));
        }
    }
}

fn router(ns: &Netns) {
    ns.sysctl("net.ipv4.ip_forward", "1");
    // The hairpin goes out where it came in; a redirect to the host itself is noise.
    ns.sysctl("net.ipv4.conf.all.send_redirects", "0");
    ns.sysctl(&format!("net.ipv4.conf.{PEER_DEV}.send_redirects"), "0");
}

/// What the attached guard did to a connect.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Failed with the errno the loaded programs refuse with (ELOOP, or EPERM before 5.18).
    Refused,
    Allowed,
}

/// Sets up the NAT, shows that a connect to PUBLIC lands on the mail host itself without a
/// guard, then attaches with `moreipme` and returns the verdict for PUBLIC:25.
fn verdict_after_attach(nat: Nat, moreipme: &str) -> Verdict {
    let mh = scene::mail_host();
    install(nat, &mh);
    let g = Guard::new(&mh.host);
    g.write_control("moreipme", moreipme);

    let before = mh.connect(PUBLIC, SMTP);
    assert_eq!(
        before,
        ProbeResult::Ok,
        "{nat:?}: connect to {PUBLIC} before attach"
    );
    // The mail host's own listener got it: from itself (output DNAT) or, hairpinned, from
    // the router's masquerading address.
    let own = format!("{HOST_V4}:{SMTP}");
    let via = match nat {
        Nat::Output => format!("{HOST_V4}:"),
        Nat::Router => format!("{PEER_V4}:"),
    };
    assert!(
        mh.host_listener
            .wait_accepted(|a| a.local == own && a.peer.starts_with(&via))
            .is_some(),
        "{nat:?}: the connect to {PUBLIC} did not loop back to the mail host: host accepted {:?}",
        mh.host_listener.accepted()
    );

    g.attach(&mh.cgroup);
    // The guard is in force, so an "allowed" verdict below is the guard's decision.
    let refused = g.refused();
    assert_eq!(
        mh.connect(HOST_V4, SMTP),
        refused,
        "{nat:?}: guard not in force"
    );
    match mh.connect(PUBLIC, SMTP) {
        r if r == refused => Verdict::Refused,
        ProbeResult::Ok => Verdict::Allowed,
        other => panic!(
            "{nat:?}: connect to {PUBLIC} failed with {other:?}, not the guard's {refused:?}"
        ),
    }
}

#[test]
fn output_dnat_address_is_refused_when_in_moreipme() {
    let moreipme = format!("{PUBLIC}\n");
    assert_eq!(
        verdict_after_attach(Nat::Output, &moreipme),
        Verdict::Refused
    );
}

#[test]
fn output_dnat_address_is_allowed_when_not_in_moreipme() {
    // Another moreipme entry, so the file is not simply empty.
    assert_eq!(
        verdict_after_attach(Nat::Output, "198.51.100.26\n"),
        Verdict::Allowed
    );
}

#[test]
fn router_hairpin_address_is_refused_when_in_moreipme() {
    let moreipme = format!("{PUBLIC}\n");
    assert_eq!(
        verdict_after_attach(Nat::Router, &moreipme),
        Verdict::Refused
    );
}

#[test]
fn router_hairpin_address_is_allowed_when_not_in_moreipme() {
    assert_eq!(
        // The other half of 198.51.100.0/24: PUBLIC is not in it.
        verdict_after_attach(Nat::Router, "198.51.100.128/25\n"),
        Verdict::Allowed
    );
}
