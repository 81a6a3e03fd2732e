//! Bringing the pinned maps to the current set, and rebuilding the guard when its pins are gone
//! (the daemon's job is to keep it in place, even after someone ran `detach --all`).
use std::collections::BTreeSet;

use guard_loader::{self as guard, GuardError, GuardMaps, PinDir, PinLock, SyncReport, limits};
use ipme::{Chain, IpmeSet};
use tracing::{error, warn};

/// The outcome of one [`apply`].
pub enum Applied {
    /// The maps hold the set now.
    Synced(SyncReport),
    /// The maps are there but refuse the update (e.g. full): what is in force stays.
    Refused(String),
    /// The pins were gone; the guard was loaded again (its links must be re-made) with the
    /// set computed then.
    Rebuilt(SyncReport, Option<IpmeSet>),
    /// The pins were gone and loading again failed (logged); retry later.
    Failed,
}

/// Writes `set`, which the caller computed while holding `lock` (lock, then compute: so the
/// daemon never writes a set older than one `sync` or `attach` applied while it waited).
/// A set over the maps' capacity is refused before anything is written. A rebuild takes the
/// lock again and computes its set with `recompute` then.
pub fn apply(
    pins: &PinDir,
    set: &IpmeSet,
    ports: &BTreeSet<u16>,
    lock: Result<PinLock, GuardError>,
    recompute: impl FnOnce() -> Result<IpmeSet, GuardError>,
) -> Applied {
    let result = lock.and_then(|lock| {
        limits::check_capacity(set)?;
        let mut maps = GuardMaps::open(pins)?;
        let r = maps.sync(set);
        drop(lock);
        r
    });
    match result {
        Ok(r) => Applied::Synced(r),
        Err(e) if pins.maps_pinned() => Applied::Refused(Chain(&e).to_string()),
        Err(e) => {
            warn!("{}; loading the guard again", Chain(&e));
            let mut fresh = None;
            let slot = &mut fresh;
            match guard::prepare_with(pins, (!ports.is_empty()).then_some(ports), move || {
                Ok::<_, GuardError>(&*slot.insert(recompute()?))
            }) {
                Ok(r) => Applied::Rebuilt(r.sync, fresh),
                Err(e) => {
                    error!("cannot restore the guard: {}; retrying", Chain(&e));
                    Applied::Failed
                }
            }
        }
    }
}
