//! Command line of qmail-guard (docs/pins.md).
use std::{net::IpAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use guard_loader::DEFAULT_PIN_DIR;

#[derive(Debug, Parser)]
#[command(
    name = "qmail-guard",
    version,
    about = "Kernel-enforced guard against qmail connecting to itself (NAT/MX loops)",
    long_about = "qmail-guard attaches cgroup connect4/connect6 eBPF programs to qmail's cgroup. \
A connect from that cgroup to a guarded port (25 by default) at one of this host's own addresses \
(interfaces, local routes, 127/8, 0/8, ::, ::1 and control/moreipme, minus control/notipme) is \
refused with ELOOP before any packet is sent; the Rust qmail-remote turns that into a permanent \
#5.4.6 bounce instead of a mail loop."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the programs, fill the maps, attach to a cgroup, pin everything, then exit.
    /// The guard stays in force after this process exits. Attaching twice is a no-op.
    Attach {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        home: Home,
        /// Guarded destination port, 1-65535 (repeat for several, at most 64). Replaces the
        /// guarded ports of every attached cgroup; without --port the ports in force are kept
        /// (25 when nothing is attached yet).
        #[arg(long = "port", value_name = "N", value_parser = port_parser())]
        ports: Vec<u16>,
        #[command(flatten)]
        pins: Pins,
        #[command(flatten)]
        danger: Danger,
    },
    /// Remove the guard from a cgroup (or from all); when nothing stays attached, also remove
    /// the pinned programs and maps.
    Detach {
        #[command(flatten)]
        target: DetachTarget,
        #[command(flatten)]
        pins: Pins,
    },
    /// Recompute the ipme set and update the pinned maps by difference (add before remove).
    /// An invalid control file changes nothing.
    ///
    /// Takes the loop detections waiting in loopcheck/spool into the learned set first
    /// (what the daemon does at once).
    Sync {
        #[command(flatten)]
        home: Home,
        #[command(flatten)]
        learn: Learn,
        #[command(flatten)]
        pins: Pins,
    },
    /// Attach (as `attach`), then keep the guard current and attached until SIGTERM: follows
    /// address and local-route changes (rtnetlink), control/moreipme and control/notipme
    /// (inotify), and re-attaches when a guarded cgroup is re-created (service restart). Logs
    /// each refusal. SIGHUP forces a full recompute. The guard stays in force after exit.
    /// Tells systemd READY=1 (Type=notify) once the maps are filled and attachments verified.
    Run {
        #[command(flatten)]
        target: RunTarget,
        #[command(flatten)]
        home: Home,
        /// Guarded destination port, 1-65535 (repeat for several, at most 64). Replaces the
        /// guarded ports of every attached cgroup; without --port the ports in force are kept
        /// (25 when nothing is attached yet), also when a cgroup is attached again.
        #[arg(long = "port", value_name = "N", value_parser = port_parser())]
        ports: Vec<u16>,
        #[command(flatten)]
        pins: Pins,
        #[command(flatten)]
        danger: Danger,
        /// Remove the guard from the targets on SIGTERM/SIGINT instead of leaving it in force.
        #[arg(long)]
        detach_on_exit: bool,
        /// At most N refusal log lines per second (0: none); the rest are summed up in one
        /// line per second, `… N more refusals suppressed`.
        #[arg(long, value_name = "N", default_value_t = crate::daemon::logs::DEFAULT_LOG_RATE)]
        log_rate: u32,
        /// Period of the full resync behind the events, in seconds.
        #[arg(long, value_name = "N", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
        resync_secs: u64,
        /// Write metrics for node_exporter's textfile collector (Prometheus text format) to PATH.
        ///
        /// PATH goes in the collector's --collector.textfile.directory and must end in .prom.
        /// The file holds: refusals per address family (exact, also those the log leaves out),
        /// entries per source, attached cgroups, the time of the last successful map update,
        /// failed updates, the pinned programs' tags and whether they are this binary's, and the
        /// generation. It is rewritten after every map update and at least every
        /// --metrics-interval seconds, atomically (a hidden temporary file in the same
        /// directory, fsynced, renamed over PATH), mode 0644. A file that cannot be written is
        /// reported once and retried; the guard never depends on it. The file stays after the
        /// daemon exits, with its last values: alert on node_textfile_mtime_seconds to notice a
        /// daemon that stopped writing.
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
        /// Rewrite the --metrics-file at least every N seconds.
        #[arg(long, value_name = "N", default_value_t = crate::daemon::metrics::DEFAULT_INTERVAL.as_secs(), value_parser = clap::value_parser!(u64).range(1..), requires = "metrics_file")]
        metrics_interval: u64,
        #[command(flatten)]
        learn: Learn,
    },
    /// Remove a learned address (one qmail-remote found to be this host) from the set and the
    /// pinned maps. If the loop is still there, the next delivery detects and learns it again.
    Forget {
        /// The learned address (IPv4 or IPv6).
        addr: IpAddr,
        #[command(flatten)]
        home: Home,
        #[command(flatten)]
        pins: Pins,
    },
    /// Show attachments, entries per source, guarded ports and refusal counters.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pins: Pins,
    },
    /// Print every entry of the ipme set computed now, with its source.
    /// When attached, a first comment line gives the generation in force and whether the
    /// kernel's set is this computed one.
    Print {
        #[command(flatten)]
        home: Home,
        #[command(flatten)]
        pins: Pins,
    },
    /// Would a connect to ADDR:PORT from the guarded cgroup be refused?
    /// Exit 0 = refused, 1 = allowed, 2 = error. Uses the pinned maps when attached, else (or
    /// without root, saying so) the set computed now, with port 25 guarded.
    Check {
        /// Destination address (IPv4 or IPv6).
        addr: IpAddr,
        /// Destination port.
        #[arg(default_value_t = guard_common::DEFAULT_PORT)]
        port: u16,
        #[command(flatten)]
        home: Home,
        #[command(flatten)]
        pins: Pins,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// A cgroup2 directory, e.g. /sys/fs/cgroup/system.slice/qmail.service.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// A systemd unit whose cgroup to use (resolved with systemctl).
    #[arg(long, value_name = "NAME")]
    pub unit: Option<String>,
}

/// `run` guards one or more cgroups (a missing one is attached when it appears).
#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct RunTarget {
    /// A cgroup2 directory to guard (repeatable).
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<PathBuf>,
    /// A systemd unit whose cgroup to guard (repeatable); it may be stopped at start.
    #[arg(long = "unit", value_name = "NAME")]
    pub units: Vec<String>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct DetachTarget {
    /// A cgroup2 directory.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// A systemd unit whose cgroup to use.
    #[arg(long, value_name = "NAME")]
    pub unit: Option<String>,
    /// Every attachment under the pin directory.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct Home {
    /// qmail's home directory (control/moreipme and control/notipme are read from it)
    /// [default: $QMAILHOME, else the build-time default, /var/qmail]
    #[arg(long, value_name = "DIR")]
    qmail_home: Option<PathBuf>,
}

impl Home {
    /// The directory to read, resolved like every other qmail-guard program does.
    pub fn dir(&self) -> PathBuf {
        ipme::qmail_home(self.qmail_home.clone())
    }
}

/// Ports as the kernel sees them: 0 is no destination port.
fn port_parser() -> clap::builder::RangedI64ValueParser<u16> {
    clap::value_parser!(u16).range(1..)
}

#[derive(Debug, Args)]
pub struct Danger {
    /// DANGEROUS: allow the cgroup2 root as target. The guard then applies to every process on
    /// this host: any program connecting to one of this host's own addresses on a guarded
    /// port is refused (ELOOP), e.g. a local monitoring check of port 25.
    #[arg(long)]
    pub allow_root_cgroup: bool,
}

/// Learning from the loops qmail-remote detects (loopcheck/spool).
#[derive(Debug, Args)]
pub struct Learn {
    /// The user qmail-remote runs as: the spool loopcheck/spool is made for it (mode 0700) and
    /// only its entries are read.
    #[arg(long, value_name = "NAME", default_value = crate::learn::DEFAULT_USER)]
    pub learn_user: String,
    /// A learned address not seen again for this long is forgotten (e.g. 30d, 12h).
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_expiry)]
    pub learn_expiry: std::time::Duration,
}

fn parse_expiry(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.as_secs() == 0 {
        return Err("must be at least one second".into());
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct Pins {
    /// bpffs directory holding the pinned maps, programs and links.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}
