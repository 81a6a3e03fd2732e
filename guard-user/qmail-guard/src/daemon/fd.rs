//! Registering the daemon's event sources (netlink, inotify, the refusal ring buffer) with the
//! tokio reactor.
use std::io;
use std::os::fd::AsRawFd;

use tokio::io::{Interest, unix::AsyncFd};

/// Registers an owned fd-holding object with the runtime.
pub fn register<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its descriptor, which stays open for as long as the AsyncFd holds
    // `inner`, and as_raw_fd always returns that same descriptor.
    unsafe { AsyncFd::register(inner) }.map_err(io::Error::from)
}

pub fn register_with_interest<T: AsRawFd>(inner: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: as in `register`.
    unsafe { AsyncFd::register_with_interest(inner, interest) }.map_err(io::Error::from)
}
