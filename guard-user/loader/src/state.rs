//! A small state file beside the pins, for `qmail-guard status`: when the maps were last
//! synchronised and by whom, and whether a daemon keeps them current. bpffs holds only BPF
//! objects, so the file lives in /run/qmail-guard/ (tmpfs: gone at reboot, like the pins),
//! one per pin directory, named after it as systemd-escape would.
use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{PinDir, SyncReport};

/// Default directory of the state files; `QMAIL_GUARD_STATE_DIR` overrides it.
pub const STATE_DIR: &str = "/run/qmail-guard";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub last_sync: Option<LastSync>,
    pub daemon: Option<DaemonInfo>,
    /// The last refusal the daemon read from the programs' log (files of older builds have
    /// none).
    #[serde(default)]
    pub last_refusal: Option<LastRefusal>,
}

/// The last update of the maps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastSync {
    /// Seconds since the Unix epoch.
    pub unix_time: u64,
    /// `daemon`, `attach` or `sync`.
    pub by: String,
    pub pid: u32,
    pub entries: usize,
    pub upserted: usize,
    pub removed: usize,
    /// The generation in force after it.
    #[serde(default)]
    pub generation: u32,
}

/// One refused connect, as the daemon read it from the programs' refusal log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastRefusal {
    /// When the daemon read the record (within about a second of the connect: the log is
    /// read at once, or at the end of a second whose --log-rate lines were used up).
    pub unix_time: u64,
    /// The process that called connect(2).
    pub pid: u32,
    /// Its task name, control characters escaped.
    pub comm: String,
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// `192.0.2.1:25` or `[2001:db8::1]:25`.
    pub destination: String,
    /// Why the address is "me": the entry's source kind (interface, moreipme, …).
    pub source: String,
}

/// The daemon that keeps this pin directory current.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DaemonInfo {
    pub pid: u32,
    pub started_unix_time: u64,
    /// The cgroups it guards (paths as given or resolved).
    pub targets: Vec<String>,
    /// The current input problem, e.g. `control/moreipme:3: …`, while the last good set stays
    /// in force; None when every input is fine.
    pub input_error: Option<String>,
}

impl DaemonInfo {
    /// Whether that daemon still runs (its pid exists and is a qmail-guard process).
    pub fn running(&self) -> bool {
        // /proc/PID/stat is `PID (COMM) STATE …`; a zombie (Z) or dead (X) task is not running.
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            return false;
        };
        let comm = &stat[open + 1..close];
        let state = stat[close + 1..].split_whitespace().next().unwrap_or("X");
        comm == "qmail-guard" && !matches!(state, "Z" | "X" | "x")
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn state_dir() -> PathBuf {
    std::env::var_os("QMAIL_GUARD_STATE_DIR")
        .map_or_else(|| PathBuf::from(STATE_DIR), PathBuf::from)
}

/// `/run/qmail-guard/<escaped pin dir>.json`.
pub fn path(pins: &PinDir) -> PathBuf {
    path_in(&state_dir(), pins)
}

fn path_in(dir: &Path, pins: &PinDir) -> PathBuf {
    dir.join(format!("{}.json", escape(&pins.root)))
}

/// systemd-escape --path: `/` becomes `-`, anything but `[A-Za-z0-9:_.]` becomes `\xNN`, so two
/// pin directories never share a file.
fn escape(path: &Path) -> String {
    let text = path.to_string_lossy();
    let trimmed = text.trim_matches('/');
    let mut out = String::new();
    for (i, b) in trimmed.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if out.is_empty() { "-".to_string() } else { out }
}

/// The state of a pin directory; empty if there is none (or it is unreadable: the file is only
/// informational).
pub fn load(pins: &PinDir) -> State {
    load_from(&path(pins))
}

fn load_from(path: &Path) -> State {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Replaces the state file atomically (write a temporary file, then rename).
pub fn store(pins: &PinDir, state: &State) -> io::Result<()> {
    store_at(&path(pins), state)
}

fn store_at(path: &Path, state: &State) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let json = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    fs::write(&tmp, json)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Records a map update by `by` (`attach`, `sync`, `daemon`).
pub fn record_sync(pins: &PinDir, by: &str, report: &SyncReport) -> io::Result<()> {
    record_sync_at(&path(pins), by, report)
}

fn record_sync_at(path: &Path, by: &str, report: &SyncReport) -> io::Result<()> {
    let mut state = load_from(path);
    state.last_sync = Some(LastSync {
        unix_time: now_unix(),
        by: by.to_string(),
        pid: std::process::id(),
        entries: report.total,
        upserted: report.upserted,
        removed: report.removed,
        generation: report.generation,
    });
    store_at(path, &state)
}

/// Records the last refusal the daemon saw.
pub fn record_refusal(pins: &PinDir, refusal: &LastRefusal) -> io::Result<()> {
    let path = path(pins);
    let mut state = load_from(&path);
    state.last_refusal = Some(refusal.clone());
    store_at(&path, &state)
}

/// Removes the state file (when the guard is removed altogether).
pub fn remove(pins: &PinDir) {
    let _ = fs::remove_file(path(pins));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_unambiguous() {
        assert_eq!(
            escape(Path::new("/sys/fs/bpf/qmail-guard")),
            "sys-fs-bpf-qmail\\x2dguard"
        );
        assert_ne!(escape(Path::new("/a-b/c")), escape(Path::new("/a/b-c")));
        assert_eq!(escape(Path::new("/")), "-");
    }

    #[test]
    fn round_trip_through_a_private_dir() {
        let dir = std::env::temp_dir().join(format!("qg-state-{}", std::process::id()));
        let path = path_in(&dir, &PinDir::new("/sys/fs/bpf/qg-state-test"));
        assert!(load_from(&path).last_sync.is_none());
        let r = SyncReport {
            upserted: 2,
            removed: 1,
            total: 7,
            generation: 3,
        };
        record_sync_at(&path, "sync", &r).unwrap();
        let last = load_from(&path).last_sync.unwrap();
        assert_eq!(
            (last.by.as_str(), last.entries, last.upserted),
            ("sync", 7, 2)
        );
        // A file written before last_refusal existed still loads.
        fs::write(&path, br#"{"last_sync":null,"daemon":null}"#).unwrap();
        let old = load_from(&path);
        assert!(old.last_refusal.is_none() && old.last_sync.is_none());
        let _ = fs::remove_dir_all(&dir);
    }
}
