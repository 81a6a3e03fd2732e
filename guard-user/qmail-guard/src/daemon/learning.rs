//! The daemon's side of learning: the spool is made at start for the qmail-remote user, swept
//! when entries arrive, and each entry logged on one line. A sweep's store is enforced before
//! it is persisted (the caller commits it after the map update).
use std::path::PathBuf;
use std::time::Duration;

use ipme::{Chain, IpmeSet};
use tracing::{error, info, warn};

use super::report::OnceError;
use crate::learn::{self, Event, Sweep, User};

pub struct Learning {
    home: PathBuf,
    /// The user qmail-remote runs as; None if unknown (then the spool's owner is not checked
    /// against it).
    user: Option<User>,
    ttl: Duration,
    error: OnceError,
}

impl Learning {
    /// Makes the spool for `user` if it is missing (or says why learning is limited).
    pub fn new(home: PathBuf, user: &str, ttl: Duration) -> Learning {
        let user = match User::lookup(user) {
            Ok(u) => {
                match learn::spool::ensure(&home, &u) {
                    Ok(true) => info!(
                        "made the learning spool {} for {}",
                        home.join(ipme::learn::SPOOL).display(),
                        u.name
                    ),
                    Ok(false) => {}
                    Err(e) => warn!("{}", Chain(&e)),
                }
                Some(u)
            }
            Err(e) => {
                warn!("{e}; learning only from an existing spool");
                None
            }
        };
        Learning {
            home,
            user,
            ttl,
            error: OnceError::default(),
        }
    }

    /// Takes the spool into the store and drops expired entries, one log line per entry.
    /// Returns the sweep to enforce (its store) and then commit, if the store changes.
    pub fn sweep(&mut self, set: &IpmeSet) -> Option<Sweep> {
        let now = ipme::learn::now_unix();
        let result = learn::sweep(
            &self.home,
            self.user.as_ref(),
            set.entries(),
            now,
            self.ttl.as_secs(),
        )
        .and_then(|sweep| {
            // Expiry without spool entries (the timer, the resync) goes through here too.
            let expired = if sweep.changed() {
                Vec::new()
            } else {
                learn::expire(&self.home, now)?
            };
            Ok((sweep, expired))
        });
        let (sweep, expired) = match result {
            Ok(r) => r,
            Err(e) => {
                self.failed(e);
                return None;
            }
        };
        if self.error.clear() {
            info!("learning works again");
        }
        for e in sweep.events.iter().chain(&expired) {
            match e {
                Event::Rejected { .. } => warn!("{e}"),
                Event::Learned { .. } | Event::Expired { .. } => info!("{e}"),
            }
        }
        if sweep.changed() {
            return Some(sweep);
        }
        // Nothing learned; rejected entries still leave the spool.
        self.commit(sweep);
        None
    }

    /// Persists a sweep (after its store is enforced).
    pub fn commit(&mut self, sweep: Sweep) {
        if let Err(e) = sweep.commit() {
            self.failed(e);
        }
    }

    fn failed(&mut self, e: learn::LearnError) {
        let msg = Chain(&e).to_string();
        if self.error.set(msg.clone()) {
            error!("{msg}");
        }
    }
}
