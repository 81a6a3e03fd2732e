//! The kernel guard seen from user space: the embedded eBPF object, the encoding of the ipme set
//! into the tries, updates by difference, pins, attaching to cgroups and status.
pub mod attach;
pub mod cgroup;
pub mod diff;
pub mod encode;
pub mod generation;
pub mod limits;
pub mod maps;
pub mod object;
pub mod pins;
pub mod privilege;
pub mod refusal;
pub mod state;
pub mod status;
pub mod sys;

use std::path::PathBuf;

pub use attach::{
    AttachReport, Pruned, attach, attach_with, detach, prepare, prepare_with, prune_stale,
    sync_with, verify,
};
pub use maps::{GuardMaps, SyncReport};
pub use pins::{DEFAULT_PIN_DIR, Hook, PinDir, PinLock};
pub use refusal::Refusal;
pub use status::{Status, status};

/// Why a guard operation failed. The message says what failed and names the object (the map,
/// the pin, the cgroup); the source, where there is one, says why.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Ipme(#[from] ipme::IpmeError),
    #[error(
        "{dir} is not on a bpffs; mount one there (`mount -t bpf bpf {dir}`) or use --pin-dir under /sys/fs/bpf", dir = .0.display()
    )]
    NoBpffs(PathBuf),
    #[error("cannot mount bpffs on /sys/fs/bpf")]
    MountBpffs(#[source] std::io::Error),
    #[error("pin path {}", .0.display())]
    PinIo(PathBuf, #[source] std::io::Error),
    #[error(
        "qmail-guard is not attached with pin directory {} (no pinned maps); run `qmail-guard attach` first", .0.display()
    )]
    NotAttached(PathBuf),
    #[error("cannot open pinned map {}", .0.display())]
    OpenMap(PathBuf, #[source] aya::maps::MapError),
    #[error("operation on BPF map {map} failed")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "pin {} holds map {:?}, not one of the guard's tries; run `qmail-guard detach --all` and attach again", .0.display(), .1
    )]
    Layout(PathBuf, String),
    #[error(
        "the pins in {} are from an earlier qmail-guard (one trie per family); run `qmail-guard attach` (or restart `qmail-guard run`) to migrate them without a gap", .0.display()
    )]
    OldLayout(PathBuf),
    #[error("cannot wait for running BPF programs to finish")]
    Barrier(#[source] std::io::Error),
    #[error(
        "the kernel refused the guard programs ({0}); it needs BPF, BTF and cgroup-bpf (CONFIG_CGROUP_BPF) and root"
    )]
    Load(String),
    #[error(
        "program {0} is missing from the embedded eBPF object; this qmail-guard was built wrongly, rebuild it"
    )]
    MissingProgram(&'static str),
    #[error("cannot attach to cgroup {}: {}", .0.display(), .1)]
    Attach(PathBuf, String),
    #[error("pinned link {}: {}", .0.display(), .1)]
    Link(PathBuf, String),
    #[error("pinned program {}: {}", .0.display(), .1)]
    ProgramPin(PathBuf, String),
    #[error(
        "{path} is {what}: another user could remove or replace the guard's pins; check who made it, remove it (`rm -r {root}`) and run the command again",
        path = .path.display(), root = .root.display()
    )]
    Untrusted {
        path: PathBuf,
        /// e.g. `owned by uid 65534, not root` or `writable by group or others (mode 0777)`.
        what: String,
        /// The pin directory to remove.
        root: PathBuf,
    },
    #[error(
        "the ipme set has {count} {family} entries, more than the kernel map holds ({limit}); nothing was changed: shorten control/moreipme or control/notipme"
    )]
    Capacity {
        family: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("--port: {0}; nothing was changed")]
    Ports(String),
}
