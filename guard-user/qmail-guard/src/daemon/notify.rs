//! systemd readiness protocol (`Type=notify`): READY=1 only once the maps are filled and every
//! existing guarded cgroup is verified attached, so units ordered after qmail-guard.service
//! start guarded. Without NOTIFY_SOCKET (daemontools, runit, a shell) every call is a no-op.
use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to ping the watchdog when `WatchdogSec=` is set: half the timeout, as systemd
/// recommends.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}
