//! `run --metrics-file PATH`: the daemon's view of the guard in the Prometheus text format, for
//! node_exporter's textfile collector.
//!
//! The file is replaced atomically: written to a temporary file in the same directory (a hidden
//! name not ending in `.prom`, so the collector never reads it), fsynced, then renamed over
//! PATH. It is rewritten after every map update (and failed update) and at least every
//! `--metrics-interval` seconds, so the refusal counters (read from the kernel's exact
//! counters, not from the rate-limited log) are never older than that.
//!
//! The text is produced by the `prometheus` crate's `TextEncoder` (format 0.0.4, what the
//! textfile collector parses) from its plain data model: it does the escaping of help texts
//! and label values. Its registry is not used: the values are read from the kernel and the
//! daemon as they are, not accumulated here.
//!
//! A file that cannot be written is reported once (and once more when it works again); the
//! guard never depends on it.
use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use guard_common::tag;
use guard_loader::{GuardMaps, Hook, PinDir, encode, object};
use ipme::IpmeSet;
use prometheus::{
    TextEncoder,
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};
use tracing::{error, info, warn};

/// Default of `--metrics-interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);

/// Every source kind, so each has a series (0 when empty) from the first file on.
const SOURCES: [u32; 6] = [
    tag::BUILTIN,
    tag::INTERFACE,
    tag::LOCAL_ROUTE,
    tag::MOREIPME,
    tag::NOT_ME,
    tag::LEARNED,
];

/// What one metrics file says. A value that could not be read is None and its metric is left
/// out of that file (a scrape then shows it missing rather than wrong).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub refused_v4: Option<u64>,
    pub refused_v6: Option<u64>,
    /// Entries of the set in force per source name (as `print` and `status` name them).
    pub entries: BTreeMap<&'static str, usize>,
    pub attached_cgroups: usize,
    /// The last successful map update, seconds since the epoch.
    pub last_sync: Option<f64>,
    pub sync_errors: u64,
    /// (hook, tag in hex, matches this binary: "true", "false", or "unknown").
    pub programs: Vec<(&'static str, String, &'static str)>,
    pub generation: Option<u32>,
}

/// Counts entries per source name; every known source appears, with 0 if it has none.
pub fn entries_by_source(set: &IpmeSet) -> BTreeMap<&'static str, usize> {
    let mut by: BTreeMap<&'static str, usize> =
        SOURCES.iter().map(|t| (tag::name(*t), 0)).collect();
    for e in set.entries() {
        *by.entry(tag::name(encode::tag_of(&e.source))).or_insert(0) += 1;
    }
    by
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn gauge(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::from_label(labels);
    m.set_gauge(g);
    m
}

fn counter(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value);
    let mut m = Metric::from_label(labels);
    m.set_counter(c);
    m
}

/// The file's text. Counts are far below 2^53, so f64 holds them exactly.
#[allow(clippy::cast_precision_loss)]
pub fn render(s: &Snapshot) -> Result<String, prometheus::Error> {
    let mut families = Vec::new();
    let refusals: Vec<Metric> = [("ipv4", s.refused_v4), ("ipv6", s.refused_v6)]
        .into_iter()
        .filter_map(|(fam, n)| Some(counter(vec![label("family", fam)], n? as f64)))
        .collect();
    if !refusals.is_empty() {
        families.push(family(
            "qmail_guard_refusals_total",
            "Connects refused by the guard (ELOOP), per address family, counted by the kernel programs (every refusal, also those the rate-limited log leaves out).",
            MetricType::COUNTER,
            refusals,
        ));
    }
    families.push(family(
        "qmail_guard_entries",
        "Entries of the ipme set in force, per source (as `qmail-guard print` and `status` name them).",
        MetricType::GAUGE,
        s.entries
            .iter()
            .map(|(src, n)| gauge(vec![label("source", src)], *n as f64))
            .collect(),
    ));
    families.push(family(
        "qmail_guard_attached_cgroups",
        "Cgroups this daemon guards and has verified attached.",
        MetricType::GAUGE,
        vec![gauge(vec![], s.attached_cgroups as f64)],
    ));
    if let Some(t) = s.last_sync {
        families.push(family(
            "qmail_guard_last_sync_timestamp_seconds",
            "When the maps last took (or were verified to hold) the computed set, seconds since the epoch.",
            MetricType::GAUGE,
            vec![gauge(vec![], t)],
        ));
    }
    families.push(family(
        "qmail_guard_sync_errors_total",
        "Failed attempts to bring the maps to the computed set (each is retried; the entries in force stay).",
        MetricType::COUNTER,
        vec![counter(vec![], s.sync_errors as f64)],
    ));
    if !s.programs.is_empty() {
        families.push(family(
            "qmail_guard_program_info",
            "The pinned kernel programs: tag (the kernel's hash of the instructions) and whether they are this binary's.",
            MetricType::GAUGE,
            s.programs
                .iter()
                .map(|(hook, tag, matches)| {
                    gauge(
                        vec![
                            label("program", hook),
                            label("tag", tag),
                            label("matches_binary", matches),
                        ],
                        1.0,
                    )
                })
                .collect(),
        ));
    }
    if let Some(g) = s.generation {
        families.push(family(
            "qmail_guard_generation",
            "Generation of the set in force (moves by one with every change of the set).",
            MetricType::GAUGE,
            vec![gauge(vec![], f64::from(g))],
        ));
    }
    TextEncoder::new().encode_to_string(&families)
}

/// Seconds since the epoch, with milliseconds.
pub fn now_seconds() -> f64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_millis() as f64) / 1000.0
}

/// The metrics file and what only the daemon knows for it.
pub struct Metrics {
    path: PathBuf,
    tmp: PathBuf,
    interval: Duration,
    /// The last write failed (reported once).
    failing: bool,
    /// This binary's program tags, read at the first write (it loads the programs once).
    own_tags: Option<Option<Vec<(Hook, u64)>>>,
    pub last_sync: Option<f64>,
    pub sync_errors: u64,
    pub entries: BTreeMap<&'static str, usize>,
}

impl Metrics {
    pub fn new(path: PathBuf, interval: Duration) -> Metrics {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.ends_with(".prom") {
            warn!(
                "--metrics-file {}: node_exporter's textfile collector reads only files ending in .prom",
                path.display()
            );
        }
        // Hidden and not ending in .prom: the collector never reads a half-written file.
        let tmp = path.with_file_name(format!(".{name}.tmp"));
        Metrics {
            path,
            tmp,
            interval,
            failing: false,
            own_tags: None,
            last_sync: None,
            sync_errors: 0,
            entries: BTreeMap::new(),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A successful map update (or verification) of `set`.
    pub fn synced(&mut self, set: &IpmeSet) {
        self.last_sync = Some(now_seconds());
        self.entries = entries_by_source(set);
    }

    pub fn sync_failed(&mut self) {
        self.sync_errors += 1;
    }

    /// Reads the kernel's side and writes the file.
    pub fn write(&mut self, pins: &PinDir, attached_cgroups: usize) {
        let snapshot = self.snapshot(pins, attached_cgroups);
        let result = render(&snapshot)
            .map_err(io::Error::other)
            .and_then(|text| write_atomically(&self.path, &self.tmp, text.as_bytes()));
        match result {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    info!("metrics file {} written again", self.path.display());
                }
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    error!(
                        "cannot write the metrics file {}: {e}; the guard is not affected, retrying every {} s",
                        self.path.display(),
                        self.interval.as_secs()
                    );
                }
            }
        }
    }

    fn snapshot(&mut self, pins: &PinDir, attached_cgroups: usize) -> Snapshot {
        let maps = GuardMaps::open(pins).ok();
        let stats = maps.as_ref().and_then(|m| m.stats().ok());
        let own = self
            .own_tags
            // The variant this binary loads on this kernel (EPERM before 5.18), as `status`.
            .get_or_insert_with(|| object::embedded_tags().ok().map(|(_, tags)| tags));
        let programs = Hook::ALL
            .into_iter()
            .filter_map(|h| {
                let pinned = object::pinned_tag(pins, h)?;
                let matches = match own {
                    Some(own) if own.contains(&(h, pinned)) => "true",
                    Some(_) => "false",
                    None => "unknown",
                };
                Some((h.name(), object::tag_hex(pinned), matches))
            })
            .collect();
        Snapshot {
            refused_v4: stats.as_ref().map(|s| s.refused_v4),
            refused_v6: stats.as_ref().map(|s| s.refused_v6),
            entries: self.entries.clone(),
            attached_cgroups,
            last_sync: self.last_sync,
            sync_errors: self.sync_errors,
            programs,
            generation: maps.as_ref().and_then(|m| m.generation().ok()),
        }
    }
}

/// Replaces `path` with `bytes` so that a reader sees the old or the new file, never a part.
/// The temporary file is created fresh (O_EXCL after removing a leftover), so a symlink
/// planted at its name in a shared directory is never followed.
fn write_atomically(path: &Path, tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    match fs::remove_file(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(tmp)?;
        // Readable by the collector (it runs unprivileged) whatever the umask.
        f.set_permissions(fs::Permissions::from_mode(0o644))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let mut entries = BTreeMap::new();
        entries.insert("builtin", 4);
        entries.insert("interface", 2);
        Snapshot {
            refused_v4: Some(3),
            refused_v6: Some(1),
            entries,
            attached_cgroups: 1,
            last_sync: Some(1_764_170_000.25),
            sync_errors: 0,
            programs: vec![("connect4", "0123456789abcdef".into(), "true")],
            generation: Some(7),
        }
    }

    #[test]
    fn renders_the_text_format_with_help_and_type() {
        let text = render(&sample()).unwrap();
        for line in [
            "# TYPE qmail_guard_refusals_total counter",
            "qmail_guard_refusals_total{family=\"ipv4\"} 3",
            "qmail_guard_refusals_total{family=\"ipv6\"} 1",
            "# TYPE qmail_guard_entries gauge",
            "qmail_guard_entries{source=\"builtin\"} 4",
            "qmail_guard_entries{source=\"interface\"} 2",
            "qmail_guard_attached_cgroups 1",
            "qmail_guard_last_sync_timestamp_seconds 1764170000.25",
            "# TYPE qmail_guard_sync_errors_total counter",
            "qmail_guard_sync_errors_total 0",
            "qmail_guard_program_info{program=\"connect4\",tag=\"0123456789abcdef\",matches_binary=\"true\"} 1",
            "qmail_guard_generation 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
        let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!((families, helps), (7, 7), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = sample();
        s.programs = vec![("connect4", "a\"b\\c\nd".into(), "false")];
        let text = render(&s).unwrap();
        assert!(
            text.contains(r#"tag="a\"b\\c\nd""#),
            "label value not escaped:\n{text}"
        );
    }

    #[test]
    fn unreadable_values_are_left_out() {
        let mut s = sample();
        s.refused_v4 = None;
        s.refused_v6 = None;
        s.generation = None;
        s.last_sync = None;
        s.programs.clear();
        let text = render(&s).unwrap();
        assert!(!text.contains("qmail_guard_refusals_total"));
        assert!(!text.contains("qmail_guard_generation"));
        assert!(text.contains("qmail_guard_attached_cgroups 1"));
    }

    #[test]
    fn every_source_has_a_series() {
        let by = entries_by_source(&IpmeSet::default());
        let names: Vec<_> = by.keys().copied().collect();
        assert_eq!(
            names,
            [
                "builtin",
                "interface",
                "learned",
                "local-route",
                "moreipme",
                "notipme"
            ]
        );
    }

    #[test]
    fn the_file_is_replaced_whole_and_readable() {
        let dir = std::env::temp_dir().join(format!("qg-metrics-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qmail_guard.prom");
        let tmp = dir.join(".qmail_guard.prom.tmp");
        // A leftover temporary file (a daemon killed mid-write) does not stop the next write.
        fs::write(&tmp, "partial").unwrap();
        write_atomically(&path, &tmp, b"a 1\n").unwrap();
        write_atomically(&path, &tmp, b"a 2\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 2\n");
        assert!(!tmp.exists());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let _ = fs::remove_dir_all(&dir);
    }
}
