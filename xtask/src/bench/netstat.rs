//! The kernel's own evidence of a stalled connect, read from /proc/net/netstat inside a
//! namespace: `ListenOverflows`/`ListenDrops` (a full accept queue dropped a connection) and
//! `TCPSynRetrans` (a SYN went unanswered and was sent again, 1 s later). A timed batch in
//! which either grew measured a retransmission timer, not connect(): it is not counted.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::kit::netns::in_netns;

/// The counters watched, as named in the `TcpExt:` lines.
const WATCHED: [&str; 3] = ["ListenOverflows", "ListenDrops", "TCPSynRetrans"];

/// Snapshots of the watched counters of a set of namespaces.
pub struct Watch {
    namespaces: Vec<(String, PathBuf)>,
    before: Vec<[u64; 3]>,
}

impl Watch {
    /// Takes the first snapshot of each `(label, netns path)`.
    pub fn new(namespaces: Vec<(String, PathBuf)>) -> Result<Watch> {
        let before = namespaces
            .iter()
            .map(|(_, p)| read(p))
            .collect::<Result<_>>()?;
        Ok(Watch { namespaces, before })
    }

    /// The watched counters that grew since the snapshot, named with their namespace
    /// (`label: Counter +n`); empty when none did.
    pub fn grown(&self) -> Result<Vec<String>> {
        let mut grew = Vec::new();
        for ((label, path), before) in self.namespaces.iter().zip(&self.before) {
            let now = read(path)?;
            for (i, name) in WATCHED.iter().enumerate() {
                if now[i] > before[i] {
                    grew.push(format!("{label}: {name} +{}", now[i] - before[i]));
                }
            }
        }
        Ok(grew)
    }
}

/// The watched counters of the namespace bound at `netns`.
fn read(netns: &Path) -> Result<[u64; 3]> {
    let text = in_netns(netns, || {
        // thread-self: /proc/self/net would show the main thread's namespace.
        std::fs::read_to_string("/proc/thread-self/net/netstat")
            .context("cannot read /proc/thread-self/net/netstat")
    })?;
    parse(&text).with_context(|| format!("in /proc/net/netstat of {}", netns.display()))
}

fn parse(text: &str) -> Result<[u64; 3]> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no TcpExt lines");
    };
    let names: Vec<&str> = names.split_whitespace().skip(1).collect();
    let values: Vec<&str> = values.split_whitespace().skip(1).collect();
    let mut out = [0; 3];
    for (i, want) in WATCHED.iter().enumerate() {
        let pos = names
            .iter()
            .position(|n| n == want)
            .with_context(|| format!("no {want} counter"))?;
        out[i] = values
            .get(pos)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no value for {want}"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tcpext_counters() {
        let t = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPSynRetrans Other\n\
                 TcpExt: 0 25 26 56 9\n\
                 IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(parse(t).unwrap(), [25, 26, 56]);
        assert!(parse("IpExt: A\nIpExt: 1\n").is_err());
        assert!(parse("TcpExt: ListenOverflows\nTcpExt: 1\n").is_err());
    }
}
