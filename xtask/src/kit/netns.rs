//! Running code of this process inside a network namespace: setns(2) changes only the calling
//! thread, so the work runs on a fresh thread that joins the namespace first. Sockets it
//! creates stay in that namespace; processes and threads it starts inherit it.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};

/// Runs `f` on a thread that has joined the network namespace bound at `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = netns.to_path_buf();
    std::thread::spawn(move || {
        join(&path)?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("the thread working in {} panicked", netns.display()))?
}

/// Moves the calling thread into the network namespace bound at `netns`.
pub fn join(netns: &Path) -> Result<()> {
    let f = File::open(netns).with_context(|| format!("cannot open {}", netns.display()))?;
    // SAFETY: setns on a descriptor we own; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns {}: {}",
            netns.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
