//! The connect benchmark's scene: one network namespace and one cgroup per policy variant,
//! identical except for the policy, so the variants can be measured interleaved, round after
//! round, and a drift of the machine hits all of them alike.
//!
//! ```text
//!  netns qgx<pid>-v<i> (one per variant)                       netns qgx<pid>-peer
//!  lo 127.0.0.1, listener on :2525 (port 25: none)              lo 198.51.100.7/32,
//!  eth0 192.0.2.(4i+2)/30 ──────────── veth ────────── v<i>        listener on :25
//!  cgroup qgx<pid>-v<i>: the bench client runs here              (another mail host)
//! ```

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use guard_tests::{Cgroup, Netns};

use crate::bench::bpfmap::V4Trie;
use crate::bench::fill;
use crate::bench::listen::Listener;
use crate::kit::guard::Guard;
use crate::kit::harness::attempt;
use crate::kit::spawn::Placement;
use crate::kit::{interrupt, names};

/// Another mail host (not in any set), reached over the veth.
pub const OTHER: &str = "198.51.100.7";
/// A port nobody guards, with a listener on 127.0.0.1.
pub const FREE_PORT: u16 = 2525;
/// A port with no listener: the kernel answers the SYN with a RST.
pub const CLOSED_PORT: u16 = 2599;

/// What decides about a connect in a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// No program, no rule.
    Bare,
    /// qmail-guard with this many IPv4 entries.
    Guard(usize),
    /// The same policy as an nftables rule with a set of this many addresses.
    Nft(usize),
}

impl Policy {
    pub fn label(self) -> String {
        match self {
            Policy::Bare => "no program".to_string(),
            Policy::Guard(n) => format!("guard {}", short(n)),
            Policy::Nft(n) => format!("nftables {}", short(n)),
        }
    }
}

/// 10, 10k, 1M.
pub fn short(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

pub struct Variant {
    pub policy: Policy,
    // Drop order: listener, guard (detach), cgroup, namespace.
    /// The listener on 127.0.0.1:`FREE_PORT`.
    pub listener: Listener,
    pub guard: Option<Guard>,
    pub cgroup: Cgroup,
    pub netns: Netns,
}

impl Variant {
    pub fn placement(&self) -> Placement {
        Placement::cgroup_netns(self.cgroup.path(), &self.netns.path())
    }
}

pub struct Scene {
    pub variants: Vec<Variant>,
    /// The listener on `OTHER`:25, in the peer namespace.
    pub other: Listener,
    pub peer: Netns,
}

impl Scene {
    /// Builds every variant; `qmail_guard` is the release binary, `cgroup2` the mount point.
    pub fn new(policies: &[Policy], qmail_guard: &Path, cgroup2: &Path) -> Result<Scene> {
        let peer = attempt("creating the peer namespace", || {
            let p = Netns::new(&names::name("peer"));
            p.add_addr("lo", &format!("{OTHER}/32"));
            p
        })?;
        let other = Listener::start(&peer.path(), SocketAddr::new(OTHER.parse()?, 25))?;
        let mut variants = Vec::new();
        for (i, &policy) in policies.iter().enumerate() {
            interrupt::check()?;
            let t = Instant::now();
            variants.push(variant(i, policy, &peer, qmail_guard, cgroup2)?);
            println!(
                "    {:<14} ready in {:.1} s",
                policy.label(),
                t.elapsed().as_secs_f64()
            );
        }
        Ok(Scene {
            variants,
            other,
            peer,
        })
    }
}

fn variant(
    i: usize,
    policy: Policy,
    peer: &Netns,
    qmail_guard: &Path,
    cgroup2: &Path,
) -> Result<Variant> {
    let host_ip = format!("192.0.2.{}", 4 * i + 2);
    let peer_ip = format!("192.0.2.{}", 4 * i + 1);
    let role = format!("v{i}");
    let netns = attempt("creating a variant namespace", || {
        let ns = Netns::new(&names::name(&role));
        Netns::veth(&ns, "eth0", peer, &role);
        ns.add_addr("eth0", &format!("{host_ip}/30"));
        peer.add_addr(&role, &format!("{peer_ip}/30"));
        ns.ip(&["route", "add", "default", "via", &peer_ip]);
        ns
    })?;
    let cgroup = attempt("creating a variant cgroup", || {
        Cgroup::new(&names::name(&role))
    })?;
    let listener = Listener::start(
        &netns.path(),
        SocketAddr::new("127.0.0.1".parse()?, FREE_PORT),
    )?;
    let mut guard = None;
    match policy {
        Policy::Bare => {}
        Policy::Guard(n) => {
            let home = std::env::temp_dir().join(names::name(&role));
            std::fs::create_dir_all(home.join("control"))
                .with_context(|| format!("cannot create {}", home.display()))?;
            let g = Guard::new(qmail_guard.to_path_buf(), &netns.path(), &home, &role);
            let attached = g.and_then(|g| g.attach(cgroup.path()).map(|_| g));
            // The home only held an empty control/: from here on the maps are what matters.
            let _ = std::fs::remove_dir_all(&home);
            let g = attached?;
            let have = entries_v4(&g)?;
            fill_trie(&g.map("IPME_V4"), n.saturating_sub(have))?;
            guard = Some(g);
        }
        Policy::Nft(n) => {
            // The guard's built-ins and interface addresses (127.0.0.1 is inside 127/8: an
            // interval set refuses overlapping elements).
            let base = ["0.0.0.0/8", "127.0.0.0/8", host_ip.as_str()];
            let extra = fill::addresses(n.saturating_sub(base.len()));
            let rules = nft_ruleset(&base, &extra, cgroup.path(), cgroup2)?;
            nft(&netns.path(), &rules)?;
        }
    }
    Ok(Variant {
        policy,
        listener,
        guard,
        cgroup,
        netns,
    })
}

/// IPv4 entries the guard has now (built-ins and interface addresses after attach).
fn entries_v4(g: &Guard) -> Result<usize> {
    let v: serde_json::Value =
        serde_json::from_str(&g.run(&["status", "--json"])?).context("status --json")?;
    v["entries_v4"]
        .as_u64()
        .map(|n| n as usize)
        .context("status --json has no entries_v4")
}

/// Adds `n` generated /32 entries tagged moreipme.
fn fill_trie(map: &Path, n: usize) -> Result<()> {
    let trie = V4Trie::open(map)?;
    for (i, a) in fill::addresses(n).into_iter().enumerate() {
        if i % 65_536 == 0 {
            interrupt::check()?;
        }
        trie.insert(a, 32, guard_common::tag::MOREIPME)?;
    }
    Ok(())
}

/// The guard's policy in nftables: port 25, from this cgroup, to an address of the set → reject
/// (a RST, so the client sees ECONNREFUSED at once, like the guard's immediate ELOOP).
fn nft_ruleset(base: &[&str], extra: &[[u8; 4]], cgroup: &Path, cgroup2: &Path) -> Result<String> {
    // nft names a cgroup by its path under /sys/fs/cgroup (hard-coded in nft) and matches the
    // ancestor at `level` below the cgroup2 root.
    let rel = cgroup.strip_prefix("/sys/fs/cgroup").with_context(|| {
        format!(
            "nft can only name cgroups under /sys/fs/cgroup, not {}",
            cgroup.display()
        )
    })?;
    let level = cgroup
        .strip_prefix(cgroup2)
        .context("the cgroup is not under the cgroup2 mount")?
        .components()
        .count();
    let mut elements = base.join(", ");
    for a in extra {
        let _ = write!(elements, ", {}.{}.{}.{}", a[0], a[1], a[2], a[3]);
    }
    Ok(format!(
        "table ip qgx_bench {{
    set ipme4 {{ type ipv4_addr; flags interval; elements = {{ {elements} }} }}
    chain out {{
        type filter hook output priority filter; policy accept;
        tcp dport 25 socket cgroupv2 level {level} \"{}\" ip daddr @ipme4 reject with tcp reset
    }}
}}
",
        rel.display()
    ))
}

/// `nft -f -` inside the namespace, joined with setns: `ip netns exec` would remount /sys and
/// nft could no longer resolve the cgroup path.
fn nft(netns: &Path, rules: &str) -> Result<()> {
    use std::io::Write as _;
    let mut c = Command::new("nft");
    c.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Placement::netns(netns).apply(&mut c)?;
    let mut child = c.spawn().context("cannot run nft")?;
    let mut stdin = child.stdin.take().context("nft stdin")?;
    // Written from a thread: nft may answer errors before it has read everything.
    let text = rules.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().context("waiting for nft")?;
    let _ = writer.join();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "nft -f failed ({}): {}",
            out.status,
            err.lines().take(5).collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(())
}
