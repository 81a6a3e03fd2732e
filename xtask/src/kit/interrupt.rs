//! Ctrl-C (SIGINT) and SIGTERM only set a flag. Every wait loop of the demo and the bench
//! checks it and returns an error, so the Drop guards remove namespaces, cgroups and pins on the
//! way out. The SIGINT handler is one-shot (SA_RESETHAND): a second Ctrl-C kills at once. The
//! SIGTERM one stays: `timeout` sends SIGTERM to its child and then again to the whole process
//! group, and a one-shot handler would let that second copy kill us before the cleanup.

use anyhow::{Result, bail};
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a plain handler that only stores an atomic.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = if sig == libc::SIGINT {
                libc::SA_RESETHAND
            } else {
                0
            };
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            bail!(
                "cannot install the signal handler: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Whether Ctrl-C or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails once interrupted, so `?` unwinds to the Drop guards.
pub fn check() -> Result<()> {
    if interrupted() {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}
