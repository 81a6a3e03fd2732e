//! The kernel guard seen from user space: the embedded eBPF object, the encoding of the ipme set
//! into the tries, updates by difference, pins, attaching to cgroups and status.
pub mod attach;
pub mod cgroup;
pub mod diff;
pub mod encode;
pub mod maps;
pub mod object;
pub mod pins;
pub mod state;
pub mod status;
pub mod sys;

use std::path::PathBuf;

pub use attach::{AttachReport, Pruned, attach, detach, prepare, prune_stale, verify};
pub use maps::{GuardMaps, SyncReport};
pub use pins::{DEFAULT_PIN_DIR, Hook, PinDir, PinLock};
pub use status::{Status, status};

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Ipme(#[from] ipme::IpmeError),
    #[error(
        "{0} is not on a bpffs; mount one there (`mount -t bpf bpf {0}`) or use --pin-dir under /sys/fs/bpf"
    )]
    NoBpffs(PathBuf),
    #[error("cannot mount bpffs on /sys/fs/bpf: {0}")]
    MountBpffs(#[source] std::io::Error),
    #[error("pin path {0}: {1}")]
    PinIo(PathBuf, #[source] std::io::Error),
    #[error(
        "qmail-guard is not attached with pin directory {0} (no pinned maps); run `qmail-guard attach` first"
    )]
    NotAttached(PathBuf),
    #[error("cannot open pinned map {0}: {1}")]
    OpenMap(PathBuf, #[source] aya::maps::MapError),
    #[error("BPF map operation failed: {0}")]
    Map(#[source] aya::maps::MapError),
    #[error(
        "the kernel refused the guard programs ({0}); it needs BPF, BTF and cgroup-bpf (CONFIG_CGROUP_BPF) and root"
    )]
    Load(String),
    #[error("cannot attach to cgroup {0}: {1}")]
    Attach(PathBuf, String),
    #[error("pinned link {0}: {1}")]
    Link(PathBuf, String),
}
