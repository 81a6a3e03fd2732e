//! The daemon's inputs, with memory: a control file that became invalid is replaced by its last
//! good contents, while interfaces and local routes are always read fresh, so an address added
//! while moreipme is broken is still guarded.
use std::path::{Path, PathBuf};

use guard_common::tag;

use guard_loader::{GuardMaps, PinDir};
use ipme::learn::{DEFAULT_EXPIRY_SECS, Store, now_unix};
use ipme::{
    ControlKind, Entry, Inputs, IpNet, IpmeError, IpmeSet, Ipv4Net, Ipv6Net, Source, interfaces,
    local_routes, read_control,
};

/// A computed set and the input problems it was computed despite.
pub struct Computed {
    pub set: IpmeSet,
    /// One line per invalid control file (`control/moreipme:3: reason`), whose last good
    /// contents were used instead.
    pub errors: Vec<IpmeError>,
}

pub struct InputState {
    home: PathBuf,
    more: Option<Vec<Entry>>,
    not: Option<Vec<Entry>>,
    /// The last good learned store.
    learned: Option<Store>,
    /// A store about to be written (a sweep enforces it before persisting it): used by the
    /// next computation instead of the file.
    pending_learned: Option<Store>,
}

impl InputState {
    pub fn new(home: &Path) -> Self {
        InputState {
            home: home.to_path_buf(),
            more: None,
            not: None,
            learned: None,
            pending_learned: None,
        }
    }

    /// The next computation uses `store` instead of reading the file (which is about to be
    /// replaced with it).
    pub fn use_learned(&mut self, store: Store) {
        self.pending_learned = Some(store);
    }

    /// When the next learned address expires (Unix seconds), per the last good store.
    pub fn next_expiry(&self) -> Option<u64> {
        self.learned.as_ref().and_then(Store::next_expiry)
    }

    /// Reads everything and computes the set. Errs on a kernel read failure (temporary: try
    /// again later) and on an invalid control file that has no last good contents.
    pub fn compute(&mut self) -> Result<Computed, IpmeError> {
        let interfaces = interfaces()?;
        let local_routes = local_routes()?;
        // Both files from one instant: an administrator replacing both (two renames) between
        // our two reads would otherwise give a pair that never existed, e.g. the new notipme
        // with the old moreipme, which can make a "me" address connectable until the next event.
        let mut tries = 0;
        let (moreipme, notipme, mut errors) = loop {
            let before = self.stamps();
            let mut errors = Vec::new();
            let moreipme = self.control(ControlKind::MoreIpme, &mut errors)?;
            let notipme = self.control(ControlKind::NotIpme, &mut errors)?;
            tries += 1;
            if self.stamps() == before || tries == 10 {
                break (moreipme, notipme, errors);
            }
        };
        let learned = self.learned(&mut errors)?;
        let set = IpmeSet::compute(&Inputs {
            interfaces,
            local_routes,
            moreipme,
            notipme,
            learned,
        });
        Ok(Computed { set, errors })
    }

    /// The learned addresses not expired now; an unreadable or damaged store keeps its last
    /// good contents, like a control file.
    fn learned(&mut self, errors: &mut Vec<IpmeError>) -> Result<Vec<Entry>, IpmeError> {
        match self
            .pending_learned
            .take()
            .map_or_else(|| Store::read(&self.home), Ok)
        {
            Ok(store) => self.learned = Some(store),
            Err(e) if self.learned.is_some() => errors.push(e),
            Err(e) => return Err(e),
        }
        Ok(self
            .learned
            .as_ref()
            .map_or_else(Vec::new, |s| s.entries(now_unix())))
    }

    /// Identity and change time of both control files (None when missing).
    fn stamps(&self) -> [Option<(u64, i64, i64, u64)>; 2] {
        use std::os::unix::fs::MetadataExt as _;
        ["moreipme", "notipme"].map(|f| {
            std::fs::metadata(self.home.join("control").join(f))
                .ok()
                .map(|m| (m.ino(), m.ctime(), m.ctime_nsec(), m.size()))
        })
    }

    fn control(
        &mut self,
        kind: ControlKind,
        errors: &mut Vec<IpmeError>,
    ) -> Result<Vec<Entry>, IpmeError> {
        let slot = match kind {
            ControlKind::MoreIpme => &mut self.more,
            ControlKind::NotIpme => &mut self.not,
        };
        match read_control(&self.home, kind) {
            Ok(entries) => {
                *slot = Some(entries.clone());
                Ok(entries)
            }
            Err(e) => match slot {
                Some(good) => {
                    errors.push(e);
                    Ok(good.clone())
                }
                None => Err(e),
            },
        }
    }

    /// For a daemon restarted while a control file (or the learned store) is invalid: take
    /// its last good contents from the pinned maps (entries tagged moreipme / notipme /
    /// learned). An entry that a
    /// higher-priority source shadowed on the same prefix is not recoverable this way; it comes
    /// back with the next valid edit.
    pub fn seed_from_maps(&mut self, pins: &PinDir) -> bool {
        let Ok(maps) = GuardMaps::open(pins) else {
            return false;
        };
        let (Ok(v4), Ok(v6)) = (maps.read_v4(), maps.read_v6()) else {
            return false;
        };
        let nets = v4
            .iter()
            .filter_map(|(&(len, data), &t)| {
                Some((IpNet::V4(Ipv4Net::new(data.into(), len as u8).ok()?), t))
            })
            .chain(v6.iter().filter_map(|(&(len, data), &t)| {
                Some((IpNet::V6(Ipv6Net::new(data.into(), len as u8).ok()?), t))
            }));
        let (mut more, mut not) = (Vec::new(), Vec::new());
        let mut learned = Store::default();
        let now = now_unix();
        for (net, t) in nets {
            // Line 0: recovered from the maps, no line of the current file.
            match t {
                tag::MOREIPME => more.push(Entry {
                    net,
                    source: Source::MoreIpme { line: 0 },
                }),
                tag::NOT_ME => not.push(Entry {
                    net,
                    source: Source::NotIpme { line: 0 },
                }),
                // Seen now, as far as we know; the full expiry from here.
                tag::LEARNED => {
                    let _ = learned.learn(net.addr(), now, DEFAULT_EXPIRY_SECS);
                }
                _ => {}
            }
        }
        self.more.get_or_insert(more);
        self.not.get_or_insert(not);
        self.learned.get_or_insert(learned);
        true
    }
}
