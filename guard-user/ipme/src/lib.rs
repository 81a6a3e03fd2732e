//! The ipme set: which addresses are "me" (this host), and why.
//!
//! One pure computation turns its inputs (interface addresses, the kernel's local routes,
//! built-ins, `control/moreipme` and `control/notipme`) into a set of prefixes, each tagged with
//! its source. The loader fills the kernel's tries from it, qmail-remote asks [`IpmeSet::is_me`]
//! and ipmeprint prints it, so the kernel and user space never disagree about what "me" is.
//!
//! Semantics (moreipme-0.6, extended to IPv6 and CIDR): the longest matching prefix decides; on
//! the same prefix a notipme entry wins; among "me" sources on one prefix one entry is kept, by
//! priority builtin > interface > local route > moreipme. `::ffff:a.b.c.d` is looked up as IPv4.
//!
//! Submodules, one job each: `control` (the control-file parser), `sources` (interfaces and
//! local routes from the kernel), `set` (computation and lookup), `home` (the qmail home),
//! `learn` (addresses learned from detected loops: the spool entry and the store formats),
//! `error`.

mod control;
mod error;
mod home;
pub mod learn;
mod set;
mod sources;

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

pub use control::{MAX_CONTROL_BYTES, parse_control, read_control};
pub use error::{Chain, IpmeError};
pub use home::{DEFAULT_HOME, qmail_home};
pub use ipnet::{IpNet, Ipv4Net, Ipv6Net};
pub use set::IpmeSet;
pub use sources::{
    LocalRoute, interfaces, is_local_route, local_routes, route_messages, table_name,
};

/// Where an ipme entry comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Always local: 0.0.0.0/8, 127.0.0.0/8, ::/128, ::1/128.
    Builtin,
    /// An address held by an interface (any state, secondaries included).
    Interface { name: String },
    /// An `RTN_LOCAL` route of any routing table (local, main or a custom one).
    LocalRoute { dev: String, table: u32 },
    /// A `control/moreipme` line (1-based).
    MoreIpme { line: usize },
    /// A `control/notipme` line (1-based): an exception, *not* me.
    NotIpme { line: usize },
    /// An address qmail-remote found to be this host (its SMTP server greeted with our own
    /// name), learned through the spool; `at` is when it was last seen (Unix seconds).
    Learned { at: u64 },
}

impl Source {
    /// The kind of source without its detail, as `print`, `status` and the refusal logs name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Builtin => "builtin",
            Source::Interface { .. } => "interface",
            Source::LocalRoute { .. } => "local-route",
            Source::MoreIpme { .. } => "moreipme",
            Source::NotIpme { .. } => "notipme",
            Source::Learned { .. } => "learned",
        }
    }

    /// False only for notipme exceptions.
    pub fn is_me(&self) -> bool {
        !matches!(self, Source::NotIpme { .. })
    }

    /// Which entry survives when several sources name the same prefix: lower wins.
    /// notipme first (0.6: ties go to "not me"), then builtin > interface > local route >
    /// moreipme > learned, so the most fundamental reason is the one shown.
    fn precedence(&self) -> u8 {
        match self {
            Source::NotIpme { .. } => 0,
            Source::Builtin => 1,
            Source::Interface { .. } => 2,
            Source::LocalRoute { .. } => 3,
            Source::MoreIpme { .. } => 4,
            Source::Learned { .. } => 5,
        }
    }

    /// Total order used to pick the surviving entry of a prefix; ties within one kind are broken
    /// by name or line so the result does not depend on input order.
    pub(crate) fn cmp_precedence(&self, other: &Source) -> std::cmp::Ordering {
        use Source::*;
        self.precedence()
            .cmp(&other.precedence())
            .then_with(|| match (self, other) {
                (Interface { name: a }, Interface { name: b }) => a.cmp(b),
                (LocalRoute { dev: a, table: ta }, LocalRoute { dev: b, table: tb }) => {
                    ta.cmp(tb).then_with(|| a.cmp(b))
                }
                (MoreIpme { line: a }, MoreIpme { line: b })
                | (NotIpme { line: a }, NotIpme { line: b }) => a.cmp(b),
                // The most recent sighting is the one to show.
                (Learned { at: a }, Learned { at: b }) => b.cmp(a),
                _ => std::cmp::Ordering::Equal,
            })
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Builtin => f.write_str("builtin"),
            Source::Interface { name } => write!(f, "interface {name}"),
            Source::LocalRoute { dev, table } => {
                write!(f, "local route table {} dev {dev}", table_name(*table))
            }
            Source::MoreIpme { line } => write!(f, "{}:{line}", ControlKind::MoreIpme.file()),
            Source::NotIpme { line } => write!(f, "{}:{line}", ControlKind::NotIpme.file()),
            Source::Learned { at } => write!(f, "learned {}", learn::rfc3339(*at)),
        }
    }
}

/// One prefix of the set and the reason it is there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Host bits are zero.
    pub net: IpNet,
    pub source: Source,
}

impl Entry {
    /// False only for notipme exceptions.
    pub fn is_me(&self) -> bool {
        self.source.is_me()
    }
}

/// Everything the set is computed from (built-ins are added by [`IpmeSet::compute`]).
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// (interface name, address).
    pub interfaces: Vec<(String, IpAddr)>,
    /// The local routes of every routing table.
    pub local_routes: Vec<LocalRoute>,
    pub moreipme: Vec<Entry>,
    pub notipme: Vec<Entry>,
    /// Learned addresses ([`learn`]), each a single host with [`Source::Learned`].
    pub learned: Vec<Entry>,
}

/// Which control file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    MoreIpme,
    NotIpme,
}

impl ControlKind {
    /// Path relative to the qmail home directory; also the label in error messages.
    pub const fn file(self) -> &'static str {
        match self {
            ControlKind::MoreIpme => "control/moreipme",
            ControlKind::NotIpme => "control/notipme",
        }
    }

    /// The source of an entry read from line `line` (1-based) of this file.
    pub fn source(self, line: usize) -> Source {
        match self {
            ControlKind::MoreIpme => Source::MoreIpme { line },
            ControlKind::NotIpme => Source::NotIpme { line },
        }
    }
}

/// qmail's own inputs: interfaces, local routes, `control/moreipme`, `control/notipme` (what
/// qmail-remote's loop rule uses; no learned addresses: those the kernel enforces).
pub fn gather(qmail_home: &Path) -> Result<Inputs, IpmeError> {
    Ok(Inputs {
        interfaces: interfaces()?,
        local_routes: local_routes()?,
        moreipme: read_control(qmail_home, ControlKind::MoreIpme)?,
        notipme: read_control(qmail_home, ControlKind::NotIpme)?,
        learned: Vec::new(),
    })
}

/// Everything the guard enforces: [`gather`] plus the learned addresses that have not expired
/// at `now` (Unix seconds).
pub fn gather_guarded(qmail_home: &Path, now: u64) -> Result<Inputs, IpmeError> {
    let mut inputs = gather(qmail_home)?;
    inputs.learned = learn::Store::read(qmail_home)?.entries(now);
    Ok(inputs)
}

/// One spelling per prefix: `::ffff:a.b.c.d/96+N` becomes `a.b.c.d/N`, because lookups (here
/// and in connect6) treat v4-mapped addresses as IPv4 and would never reach such a v6 entry.
/// Host bits are cleared.
pub(crate) fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(n) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n.trunc());
    }
    net.trunc()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_display() {
        assert_eq!(Source::Builtin.to_string(), "builtin");
        let i = Source::Interface {
            name: "eth0".into(),
        };
        assert_eq!(i.to_string(), "interface eth0");
        let r = Source::LocalRoute {
            dev: "lo".into(),
            table: 254,
        };
        assert_eq!(r.to_string(), "local route table main dev lo");
        let r = Source::LocalRoute {
            dev: "eth0".into(),
            table: 100,
        };
        assert_eq!(r.to_string(), "local route table 100 dev eth0");
        assert_eq!(
            Source::MoreIpme { line: 3 }.to_string(),
            "control/moreipme:3"
        );
        assert_eq!(Source::NotIpme { line: 2 }.to_string(), "control/notipme:2");
        assert_eq!(
            Source::Learned { at: 1_764_165_184 }.to_string(),
            "learned 2025-11-26T13:53:04Z"
        );
    }

    #[test]
    fn source_kinds() {
        assert_eq!(Source::Builtin.kind(), "builtin");
        let r = Source::LocalRoute {
            dev: "x".into(),
            table: 255,
        };
        assert_eq!(r.kind(), "local-route");
        assert!(!Source::NotIpme { line: 1 }.is_me());
        assert!(Source::MoreIpme { line: 1 }.is_me());
    }

    #[test]
    fn control_kind_files() {
        assert_eq!(ControlKind::MoreIpme.file(), "control/moreipme");
        assert_eq!(ControlKind::NotIpme.file(), "control/notipme");
        assert_eq!(ControlKind::NotIpme.source(4), Source::NotIpme { line: 4 });
    }

    #[test]
    fn canonical_net_maps_v4_mapped() {
        let n: IpNet = "::ffff:198.51.100.0/120".parse().unwrap();
        assert_eq!(
            canonical_net(n),
            "198.51.100.0/24".parse::<IpNet>().unwrap()
        );
        let n: IpNet = "::ffff:0:0/96".parse().unwrap();
        assert_eq!(canonical_net(n), "0.0.0.0/0".parse::<IpNet>().unwrap());
        // Shorter than /96 covers more than the mapped range: stays IPv6.
        let n: IpNet = "::/64".parse().unwrap();
        assert_eq!(canonical_net(n), n);
        let n: IpNet = "2001:db8::1/32".parse().unwrap();
        assert_eq!(canonical_net(n), "2001:db8::/32".parse::<IpNet>().unwrap());
    }
}
