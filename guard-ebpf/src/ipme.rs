//! The ipme tries, in two generations per family, and the lookup the programs make: read the
//! generation, then look up the trie it selects. User space fills the standby tries and flips
//! the generation with one map update, so a set change becomes visible all at once.
use aya_ebpf::btf_maps::{Array, LpmTrie, lpm_trie::Key};
use guard_common::{IpmeValue, Ipv4Data, Ipv6Data, MAX_IPME_ENTRIES};

/// Slot 0: the generation in force. Slot 1: written by user space only (the generation whose
/// set both tries hold, so a writer may read one trie instead of two).
#[btf_map]
static IPME_GEN: Array<u32, 2> = Array::new();
#[btf_map]
static IPME_V4_0: LpmTrie<Ipv4Data, IpmeValue, MAX_IPME_ENTRIES> = LpmTrie::new();
#[btf_map]
static IPME_V4_1: LpmTrie<Ipv4Data, IpmeValue, MAX_IPME_ENTRIES> = LpmTrie::new();
#[btf_map]
static IPME_V6_0: LpmTrie<Ipv6Data, IpmeValue, MAX_IPME_ENTRIES> = LpmTrie::new();
#[btf_map]
static IPME_V6_1: LpmTrie<Ipv6Data, IpmeValue, MAX_IPME_ENTRIES> = LpmTrie::new();

use aya_ebpf::macros::btf_map;

/// Whether generation 1's tries are the active ones. A missing slot cannot happen (an array
/// always has its element); generation 0 is then the safe reading, the one a fresh load fills.
#[inline(always)]
fn odd() -> bool {
    IPME_GEN
        .get(0)
        .is_some_and(|g| guard_common::active_index(*g) == 1)
}

/// The longest-prefix entry of the active IPv4 trie for `addr` (network byte order octets).
#[inline(always)]
pub fn lookup_v4(addr: Ipv4Data) -> Option<&'static IpmeValue> {
    let key = Key::new(32, addr);
    if odd() {
        IPME_V4_1.get(&key)
    } else {
        IPME_V4_0.get(&key)
    }
}

/// The longest-prefix entry of the active IPv6 trie for `addr`.
#[inline(always)]
pub fn lookup_v6(addr: Ipv6Data) -> Option<&'static IpmeValue> {
    let key = Key::new(128, addr);
    if odd() {
        IPME_V6_1.get(&key)
    } else {
        IPME_V6_0.get(&key)
    }
}
