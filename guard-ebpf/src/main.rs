//! Kernel side of qmail-guard: cgroup connect4/connect6 programs.
//!
//! A connect from the guarded cgroup to a guarded port at an address whose longest-prefix match
//! in the ipme trie is a "me" tag is refused with ELOOP (set with `bpf_set_retval`), so user space
//! can tell the guard from a firewall's EPERM. Everything else is allowed and costs no log.
//!
//! Kernels before 5.18 do not let cgroup sock_addr programs call `bpf_set_retval`; for them the
//! object also carries `connect4_eperm`/`connect6_eperm`, the same programs refusing with the
//! kernel's default EPERM. The loader picks the variant the kernel accepts. The EPERM programs
//! count refusals but do not log them: a second copy of the logging code makes LLVM outline
//! aya-log's record writer into a BPF function returning a stack pointer, which the verifier
//! rejects.
#![no_std]
#![no_main]

mod ipme;

use aya_ebpf::{
    bindings::bpf_sock_addr,
    btf_maps::{HashMap, PerCpuArray},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, generated::bpf_set_retval},
    macros::{btf_map, cgroup_sock_addr},
    programs::SockAddrContext,
};
use aya_log_ebpf::info;
use guard_common::{MAX_PORTS, PortValue, Stats, tag};

/// Verdicts of a cgroup sock_addr program.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
/// Linux errno ELOOP ("too many levels of symbolic links"): never produced by connect(2) itself,
/// so qmail-remote can map it to perm_ambigmx without confusing it with a firewall.
const ELOOP: i32 = 40;

#[btf_map]
static PORTS: HashMap<u16, PortValue, MAX_PORTS> = HashMap::new();
#[btf_map]
static STATS: PerCpuArray<Stats, 1> = PerCpuArray::new();

/// How a program refuses: with ELOOP, or (no `bpf_set_retval`) with the kernel's EPERM.
const WITH_ELOOP: bool = true;
const WITH_EPERM: bool = false;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    guard_connect4::<WITH_ELOOP>(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    guard_connect6::<WITH_ELOOP>(&ctx)
}

#[cgroup_sock_addr(connect4)]
pub fn connect4_eperm(ctx: SockAddrContext) -> i32 {
    guard_connect4::<WITH_EPERM>(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6_eperm(ctx: SockAddrContext) -> i32 {
    guard_connect6::<WITH_EPERM>(&ctx)
}

#[inline(always)]
fn guard_connect4<const SET_RETVAL: bool>(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_sock_addr for the program's lifetime.
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    let port = dest_port(sa);
    if !port_guarded(port) {
        return ALLOW;
    }
    variant_marker();
    check_v4::<SET_RETVAL>(ctx, sa.user_ip4, port)
}

#[inline(always)]
fn guard_connect6<const SET_RETVAL: bool>(ctx: &SockAddrContext) -> i32 {
    // SAFETY: as above.
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    let port = dest_port(sa);
    if !port_guarded(port) {
        return ALLOW;
    }
    variant_marker();
    let w = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    // ::ffff:a.b.c.d reaches an IPv4 destination: decide with the IPv4 trie.
    if w[0] == 0 && w[1] == 0 && w[2] == u32::to_be(0xffff) {
        return check_v4::<SET_RETVAL>(ctx, w[3], port);
    }
    let mut addr = [0u8; 16];
    addr[0..4].copy_from_slice(&w[0].to_ne_bytes());
    addr[4..8].copy_from_slice(&w[1].to_ne_bytes());
    addr[8..12].copy_from_slice(&w[2].to_ne_bytes());
    addr[12..16].copy_from_slice(&w[3].to_ne_bytes());
    match ipme::lookup_v6(addr) {
        Some(v) if v.is_me() => {
            let t = v.tag;
            count(|s| s.refused_v6 += 1);
            if SET_RETVAL {
                let (pid, comm) = who();
                let comm = comm_str(&comm);
                info!(
                    ctx,
                    "refused pid={} comm={} dst=[{:i}]:{} source={}",
                    pid,
                    comm,
                    addr,
                    port,
                    tag::name(t)
                );
            }
            refuse::<SET_RETVAL>()
        }
        _ => ALLOW,
    }
}

/// `user_ip4` holds the address in network byte order, so its in-memory bytes are the octets.
fn check_v4<const SET_RETVAL: bool>(ctx: &SockAddrContext, ip4_be: u32, port: u16) -> i32 {
    let addr = ip4_be.to_ne_bytes();
    match ipme::lookup_v4(addr) {
        Some(v) if v.is_me() => {
            let t = v.tag;
            count(|s| s.refused_v4 += 1);
            if SET_RETVAL {
                let (pid, comm) = who();
                let comm = comm_str(&comm);
                info!(
                    ctx,
                    "refused pid={} comm={} dst={:i}:{} source={}",
                    pid,
                    comm,
                    u32::from_be(ip4_be),
                    port,
                    tag::name(t)
                );
            }
            refuse::<SET_RETVAL>()
        }
        _ => ALLOW,
    }
}

/// `user_port` holds the port in network byte order in its low 16 bits.
#[inline(always)]
fn dest_port(sa: &bpf_sock_addr) -> u16 {
    u16::from_be(sa.user_port as u16)
}

/// The upgrade test needs a build whose programs differ from the default one: this feature
/// adds a volatile no-op read, which changes the instructions (and so the program tags) only.
#[inline(always)]
fn variant_marker() {
    #[cfg(feature = "upgrade-test-variant")]
    {
        let marker = 0x5147_u32;
        // SAFETY: a read of a live local.
        let _ = unsafe { core::ptr::read_volatile(&marker) };
    }
}

#[inline(always)]
fn port_guarded(port: u16) -> bool {
    PORTS.get_ptr(&port).is_some()
}

#[inline(always)]
fn count(f: impl FnOnce(&mut Stats)) {
    if let Some(p) = STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        f(unsafe { &mut *p });
    }
}

#[inline(always)]
fn who() -> (u32, [u8; 16]) {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    (pid, bpf_get_current_comm().unwrap_or([0u8; 16]))
}

/// The task name as a str of all 16 bytes; user space trims the NUL padding. Computing the
/// length here would fork the verifier into 17 paths through the logging code (a second of
/// verification per load).
#[inline(always)]
fn comm_str(comm: &[u8; 16]) -> &str {
    // SAFETY: only passed to the logger, which validates UTF-8 when it formats the record.
    unsafe { core::str::from_utf8_unchecked(comm) }
}

#[inline(always)]
fn refuse<const SET_RETVAL: bool>() -> i32 {
    if SET_RETVAL {
        // SAFETY: helper call allowed for cgroup sock_addr programs from 5.18; sets the
        // syscall's errno. The EPERM variant never reaches it, so its verification on older
        // kernels never sees the unknown helper.
        unsafe { bpf_set_retval(-ELOOP) };
    }
    REFUSE
}

// Host builds (clippy --workspace) link std, which brings its own handler.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
