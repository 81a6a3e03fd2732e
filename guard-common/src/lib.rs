//! Types and names shared by the kernel programs (guard-ebpf) and user space (guard-user/*).
//!
//! Everything that both sides must agree on lives here, once: map and program names, the value
//! tags stored in the ipme tries, the statistics layout and the size limits.
#![no_std]

/// Map names (<= 15 bytes: the kernel truncates longer names).
///
/// The ipme set lives in two generations of tries per family; the program reads the one-element
/// `IPME_GEN` array and looks up the trie of index `active_index(generation)`. A writer fills the
/// standby tries, then flips the generation with one map update, so a set change becomes
/// visible to connects all at once.
pub const MAP_IPME_GEN: &str = "IPME_GEN";
/// Kernel names of the IPv4 tries, by index.
pub const MAP_IPME_V4_TRIES: [&str; 2] = ["IPME_V4_0", "IPME_V4_1"];
/// Kernel names of the IPv6 tries, by index.
pub const MAP_IPME_V6_TRIES: [&str; 2] = ["IPME_V6_0", "IPME_V6_1"];
/// Pin names of the active tries (what `bpftool map dump pinned …/maps/IPME_V4` shows: the set in
/// force). The standby tries are pinned as `<name>_STANDBY` (bpffs refuses dots in names).
pub const MAP_IPME_V4: &str = "IPME_V4";
pub const MAP_IPME_V6: &str = "IPME_V6";
/// Suffix of the standby tries' pin names.
pub const STANDBY_SUFFIX: &str = "_STANDBY";
pub const MAP_PORTS: &str = "PORTS";
pub const MAP_STATS: &str = "STATS";

/// Program names (the Rust function names in guard-ebpf).
pub const PROG_CONNECT4: &str = "connect4";
pub const PROG_CONNECT6: &str = "connect6";
/// The same programs refusing with EPERM, for kernels (< 5.18) whose cgroup sock_addr programs
/// cannot call `bpf_set_retval`.
pub const PROG_CONNECT4_EPERM: &str = "connect4_eperm";
pub const PROG_CONNECT6_EPERM: &str = "connect6_eperm";

/// Capacity of each ipme trie. LPM tries are never preallocated, so an unused capacity costs
/// nothing; it is large enough for the 1M-entry benchmark.
pub const MAX_IPME_ENTRIES: usize = 1 << 21;
/// Index of the tries a generation selects (0 or 1): the parity, so a wrapping counter alternates.
pub const fn active_index(generation: u32) -> usize {
    (generation & 1) as usize
}

/// Capacity of the guarded-port set.
pub const MAX_PORTS: usize = 64;
/// Default guarded port: SMTP.
pub const DEFAULT_PORT: u16 = 25;

/// Tags stored as the value of every ipme trie entry. One longest-prefix lookup returns the
/// tag, so the program decides with one lookup and `bpftool map dump` shows why.
/// 0 is never stored, so a zeroed value is recognisably invalid.
pub mod tag {
    /// A `control/notipme` exception: the address is *not* me.
    pub const NOT_ME: u32 = 1;
    /// Always-local addresses: 0.0.0.0/8, 127.0.0.0/8, ::/128, ::1/128.
    pub const BUILTIN: u32 = 2;
    /// An address held by an interface.
    pub const INTERFACE: u32 = 3;
    /// A prefix of the kernel's local routing table (`ip route add local … dev lo`).
    pub const LOCAL_ROUTE: u32 = 4;
    /// A `control/moreipme` entry.
    pub const MOREIPME: u32 = 5;
    /// An address learned from a loop qmail-remote detected (its peer greeted with our name).
    pub const LEARNED: u32 = 6;

    /// Short name of a tag, as printed by `qmail-guard print` and in refusal logs.
    pub const fn name(tag: u32) -> &'static str {
        match tag {
            NOT_ME => "notipme",
            BUILTIN => "builtin",
            INTERFACE => "interface",
            LOCAL_ROUTE => "local-route",
            MOREIPME => "moreipme",
            LEARNED => "learned",
            _ => "unknown",
        }
    }
}

/// Value of an `IPME_V4`/`IPME_V6` entry. A struct (not a bare u32) so BTF names the field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpmeValue {
    pub tag: u32,
}

impl IpmeValue {
    pub const fn is_me(&self) -> bool {
        self.tag != tag::NOT_ME && self.tag != 0
    }
}

/// Value of a `PORTS` entry (key: the port in host byte order, u16).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortValue {
    pub guarded: u8,
}

/// Per-CPU refusal counters, one slot (index 0) of the `STATS` per-CPU array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub refused_v4: u64,
    pub refused_v6: u64,
}

/// LPM trie key data: the address in network byte order, as the kernel compares it.
pub type Ipv4Data = [u8; 4];
pub type Ipv6Data = [u8; 16];

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] struct of integers without padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::IpmeValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Stats {}
}
