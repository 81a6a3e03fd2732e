//! Whether we run as root (apt, bpffs and the real-kernel tests need it).

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
