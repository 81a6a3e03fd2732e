//! qmail-remote drop-in: see `guard_user::remote`.
//!
//! `no_main`: std's runtime setup (stack-guard probing through /proc/self/maps, the
//! sigaltstack handler, the fd 0-2 poll) costs about 20 system calls per delivery and nothing
//! here needs it; `remote::main` ignores SIGPIPE itself, and argv still comes from std (glibc
//! passes it to std's init_array hook).
#![no_main]

#[unsafe(no_mangle)]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    qmail_remote::main()
}

// libm.so is needed only for exp() (hickory's server statistics) and pow() (tokio's scheduler).
// Loading it costs ~300 KB of RSS and 8 system calls on every delivery, so the binary carries
// musl's implementations (the libm crate) and the linker (--as-needed) drops libm.so.
#[unsafe(no_mangle)]
extern "C" fn exp(x: f64) -> f64 {
    libm::exp(x)
}

#[unsafe(no_mangle)]
extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}
