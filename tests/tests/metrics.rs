//! `qmail-guard run --metrics-file`: the Prometheus textfile, parsed as a collector would, counts
//! exactly the refusals made from the guarded cgroup, the entries `print` lists and the
//! attached cgroup, and moves after a sync; an unwritable file costs one error line and never
//! the guard. `qmail-guard status` shows the last refusal the daemon saw, and `status --json`
//! is one JSON document in every state.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use guard_tests::bpftool;
use guard_tests::daemon::{Daemon, eventually};
use guard_tests::node_exporter::NodeExporter;
use guard_tests::probe::{self, ProbeResult};
use guard_tests::scene::{self, MORE_V4_MEMBER};
use guard_tests::topology::{HOST_V4, HOST_V6};
use guard_tests::unique::unique_name;
use guard_tests::{Guard, MailHost};

const SMTP: u16 = 25;

/// A private directory for the metrics file, removed on drop (also after a failed assertion).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(unique_name());
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The parsed file: every sample, and the declared TYPE and HELP per metric name.
#[derive(Debug, Default)]
struct Exposition {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
    helps: BTreeMap<String, String>,
}

impl Exposition {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {:#?}", self.samples))
    }

    fn with_name(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

/// A parser of the Prometheus text format (0.0.4), strict enough to catch what would make
/// node_exporter reject the file: a sample before its TYPE, an unknown type, a second TYPE, a
/// bad escape, a value that is not a number.
fn parse(text: &str) -> Exposition {
    let mut e = Exposition::default();
    assert!(text.ends_with('\n'), "the file must end with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "untyped", "summary", "histogram"].contains(&kind),
                "unknown type in {line:?}"
            );
            assert!(
                e.types.insert(name.into(), kind.into()).is_none(),
                "second TYPE line for {name}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            e.helps.insert(name.into(), help.into());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let sample = parse_sample(line);
        // Summaries and histograms name their parts with a suffix.
        let declared = e.types.contains_key(&sample.name)
            || ["_sum", "_count", "_bucket"].iter().any(|suffix| {
                sample.name.strip_suffix(suffix).is_some_and(|base| {
                    matches!(
                        e.types.get(base).map(String::as_str),
                        Some("summary" | "histogram")
                    )
                })
            });
        assert!(
            declared,
            "sample before (or without) its TYPE line: {line:?}"
        );
        e.samples.push(sample);
    }
    e
}

fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    let name = &line[..name_end];
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name in {line:?}"
    );
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        let end;
        loop {
            let (i, c) = chars
                .next()
                .unwrap_or_else(|| panic!("unclosed {{ in {line:?}"));
            match c {
                '}' if key.is_empty() => {
                    end = i + 1;
                    break;
                }
                ',' if key.is_empty() => {}
                '=' => {
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line:?}");
                    let mut value = String::new();
                    loop {
                        match chars.next().map(|(_, c)| c) {
                            Some('"') => break,
                            Some('\\') => match chars.next().map(|(_, c)| c) {
                                Some('\\') => value.push('\\'),
                                Some('"') => value.push('"'),
                                Some('n') => value.push('\n'),
                                other => panic!("bad escape {other:?} in {line:?}"),
                            },
                            Some('\n') | None => panic!("unterminated label value in {line:?}"),
                            Some(c) => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        }
        rest = &inner[end..];
    }
    let mut fields = rest.split_whitespace();
    let value: f64 = fields
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad value in {line:?}"));
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .unwrap_or_else(|_| panic!("bad timestamp in {line:?}"));
    }
    assert!(fields.next().is_none(), "trailing text in {line:?}");
    Sample {
        name: name.into(),
        labels,
        value,
    }
}

fn read(path: &Path) -> Option<Exposition> {
    fs::read_to_string(path).ok().map(|t| parse(&t))
}

/// Waits until the file exists and `pred` holds for it; returns that version.
fn wait_for(path: &Path, what: &str, pred: impl Fn(&Exposition) -> bool) -> Exposition {
    let mut last = None;
    eventually(&format!("metrics file: {what}"), || {
        last = read(path);
        last.as_ref().is_some_and(&pred)
    });
    last.expect("checked above")
}

/// A connect from the guarded cgroup that the guard refuses; returns the probe's pid.
fn refuse(mh: &MailHost, addr: &str) -> u32 {
    let mut c = probe::probe_command(Some(&mh.cgroup), &mh.host, &["connect", addr, "25"]);
    c.stdout(std::process::Stdio::piped());
    let child = c.spawn().expect("spawn guard-probe");
    let pid = child.id();
    let out = child.wait_with_output().expect("guard-probe output");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "errno 40 ELOOP",
        "connect to {addr}:25 from the guarded cgroup"
    );
    pid
}

/// `print`'s entries per source kind (the names `status` and the metrics use).
fn print_counts(g: &Guard) -> BTreeMap<String, usize> {
    let home = g.home().to_str().expect("UTF-8 home");
    let out = g.run_ok(&["print", "--qmail-home", home]);
    let mut by = BTreeMap::new();
    for line in out.lines().filter(|l| !l.starts_with('#')) {
        let source = line
            .split_once(' ')
            .map(|(_, s)| s.trim_start())
            .unwrap_or_else(|| panic!("print line without a source: {line:?}"));
        let kind = [
            ("builtin", "builtin"),
            ("interface ", "interface"),
            ("local route ", "local-route"),
            ("control/moreipme:", "moreipme"),
            ("control/notipme:", "notipme"),
            ("learned ", "learned"),
        ]
        .iter()
        .find(|(prefix, _)| source.starts_with(prefix))
        .map(|(_, k)| *k)
        .unwrap_or_else(|| panic!("unknown source in print line {line:?}"));
        *by.entry(kind.to_string()).or_insert(0) += 1;
    }
    by
}

fn metric_counts(e: &Exposition) -> BTreeMap<String, usize> {
    e.with_name("qmail_guard_entries")
        .into_iter()
        .filter(|s| s.value > 0.0)
        .map(|s| (s.labels["source"].clone(), s.value as usize))
        .collect()
}

#[test]
fn metrics_file_counts_refusals_entries_and_attachments_and_moves_after_a_sync() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    let dir = TempDir::new();
    let path = dir.0.join("qmail_guard.prom");
    let p = path.to_str().expect("UTF-8 path");
    let d = Daemon::start(
        &g,
        mh.cgroup.path(),
        &["--metrics-file", p, "--metrics-interval", "1"],
    );

    // Written at start: nothing refused yet, every metric with HELP and TYPE.
    let first = wait_for(&path, "written at start", |_| true);
    for (name, kind) in [
        ("qmail_guard_refusals_total", "counter"),
        ("qmail_guard_entries", "gauge"),
        ("qmail_guard_attached_cgroups", "gauge"),
        ("qmail_guard_last_sync_timestamp_seconds", "gauge"),
        ("qmail_guard_sync_errors_total", "counter"),
        ("qmail_guard_program_info", "gauge"),
        ("qmail_guard_generation", "gauge"),
    ] {
        assert_eq!(
            first.types.get(name).map(String::as_str),
            Some(kind),
            "TYPE of {name}"
        );
        assert!(first.helps.contains_key(name), "HELP of {name}");
    }
    assert_eq!(
        first.value("qmail_guard_refusals_total", &[("family", "ipv4")]),
        0.0
    );
    assert_eq!(
        first.value("qmail_guard_refusals_total", &[("family", "ipv6")]),
        0.0
    );
    assert_eq!(first.value("qmail_guard_attached_cgroups", &[]), 1.0);
    assert_eq!(first.value("qmail_guard_sync_errors_total", &[]), 0.0);
    assert_eq!(metric_counts(&first), print_counts(&g), "entries vs print");
    // The kernel's programs, by bpftool, and they are this build's.
    for hook in ["connect4", "connect6"] {
        let tag = bpftool::prog_tag(&g.pin_dir().join("progs").join(hook));
        assert_eq!(
            first.value(
                "qmail_guard_program_info",
                &[("program", hook), ("tag", &tag), ("matches_binary", "true")]
            ),
            1.0,
            "{hook}"
        );
    }
    let gen0 = first.value("qmail_guard_generation", &[]);
    let status = g.status_json();
    assert_eq!(gen0, status["generation"].as_f64().expect("generation"));

    // Refusals from the guarded cgroup, both families: counted exactly.
    for _ in 0..3 {
        refuse(&mh, HOST_V4);
    }
    for _ in 0..2 {
        refuse(&mh, HOST_V6);
    }
    let counted = wait_for(&path, "3 IPv4 and 2 IPv6 refusals", |e| {
        e.get("qmail_guard_refusals_total", &[("family", "ipv4")]) == Some(3.0)
            && e.get("qmail_guard_refusals_total", &[("family", "ipv6")]) == Some(2.0)
    });
    let before = counted.value("qmail_guard_last_sync_timestamp_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        before <= now && before > now - 600.0,
        "last sync {before} is not a recent Unix time (now {now})"
    );

    // A sync (moreipme changed): a later timestamp, the new entry, a new generation.
    thread::sleep(Duration::from_millis(20));
    g.write_control("moreipme", &format!("{MORE_V4_MEMBER}\n"));
    let synced = wait_for(&path, "the moreipme entry", |e| {
        e.get("qmail_guard_entries", &[("source", "moreipme")]) == Some(1.0)
    });
    assert!(
        synced.value("qmail_guard_last_sync_timestamp_seconds", &[]) > before,
        "last sync timestamp did not advance"
    );
    assert!(synced.value("qmail_guard_generation", &[]) > gen0);
    assert_eq!(metric_counts(&synced), print_counts(&g), "entries vs print");
    assert_eq!(
        synced.value("qmail_guard_refusals_total", &[("family", "ipv4")]),
        3.0,
        "counters survive a sync"
    );

    // Only the .prom file is in the directory (no temporary file left beside it). The
    // periodic writer may be between create and rename at any instant (it fsyncs), so a
    // temporary file must go away, not be absent at one arbitrary moment.
    let names = || -> Vec<String> {
        fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    eventually("only qmail_guard.prom in the metrics directory", || {
        names() == ["qmail_guard.prom"]
    });
    d.assert_running("after the metrics checks");
    assert!(
        !d.lines().iter().any(|l| l.contains("metrics")),
        "no metrics messages expected: {:?}",
        d.lines()
    );
}

/// The real consumer: node_exporter's textfile collector reads the file without a parse error
/// and exports the same values and types.
#[test]
fn node_exporter_exports_the_file_without_error() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    let dir = TempDir::new();
    let path = dir.0.join("qmail_guard.prom");
    let p = path.to_str().expect("UTF-8 path");
    let _d = Daemon::start(
        &g,
        mh.cgroup.path(),
        &["--metrics-file", p, "--metrics-interval", "1"],
    );
    refuse(&mh, HOST_V4);
    refuse(&mh, HOST_V6);
    refuse(&mh, HOST_V6);
    wait_for(&path, "1 IPv4 and 2 IPv6 refusals", |e| {
        e.get("qmail_guard_refusals_total", &[("family", "ipv6")]) == Some(2.0)
    });

    let ne = NodeExporter::start(&dir.0);
    let body = ne.scrape();
    let e = parse(&body);
    assert_eq!(
        e.value("node_textfile_scrape_error", &[]),
        0.0,
        "node_exporter could not parse the file:\n{body}"
    );
    assert!(
        e.get("node_textfile_mtime_seconds", &[("file", p)])
            .is_some()
            || e.get(
                "node_textfile_mtime_seconds",
                &[("file", "qmail_guard.prom")]
            )
            .is_some(),
        "the file's mtime is not exported:\n{body}"
    );
    assert_eq!(
        e.value("qmail_guard_refusals_total", &[("family", "ipv4")]),
        1.0
    );
    assert_eq!(
        e.value("qmail_guard_refusals_total", &[("family", "ipv6")]),
        2.0
    );
    assert_eq!(e.value("qmail_guard_attached_cgroups", &[]), 1.0);
    assert_eq!(
        e.value("qmail_guard_entries", &[("source", "interface")]),
        print_counts(&g)["interface"] as f64
    );
    for (name, kind) in [
        ("qmail_guard_refusals_total", "counter"),
        ("qmail_guard_sync_errors_total", "counter"),
        ("qmail_guard_entries", "gauge"),
        ("qmail_guard_program_info", "gauge"),
        ("qmail_guard_last_sync_timestamp_seconds", "gauge"),
        ("qmail_guard_generation", "gauge"),
    ] {
        assert_eq!(e.types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    assert_eq!(e.with_name("qmail_guard_program_info").len(), 2);
}

#[test]
fn an_unwritable_metrics_file_is_reported_once_and_the_guard_goes_on() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);
    let dir = TempDir::new();
    // Root writes through permission bits: a directory that does not exist is what fails.
    let missing = dir.0.join("not-yet");
    let path = missing.join("qmail_guard.prom");
    let p = path.to_str().expect("UTF-8 path");
    let d = Daemon::start(
        &g,
        mh.cgroup.path(),
        &["--metrics-file", p, "--metrics-interval", "1"],
    );
    d.wait_line("metrics error line", |l| {
        l.contains("cannot write the metrics file") && l.contains(p)
    });
    // Several ticks and a sync later: still that one line, and the daemon guards.
    g.write_control("moreipme", &format!("{MORE_V4_MEMBER}\n"));
    eventually("moreipme entry refused", || {
        mh.connect(MORE_V4_MEMBER, SMTP) == ProbeResult::REFUSED
    });
    thread::sleep(Duration::from_millis(3500));
    d.assert_running("with an unwritable metrics file");
    assert_eq!(mh.connect(HOST_V4, SMTP), ProbeResult::REFUSED);
    let errors: Vec<String> = d
        .lines()
        .into_iter()
        .filter(|l| l.contains("metrics file"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "one error line, not one per tick: {errors:?}"
    );
    assert!(errors[0].contains("ERROR"), "{errors:?}");

    // The directory appears: the next tick writes the file, and says so once.
    fs::create_dir(&missing).unwrap();
    let e = wait_for(&path, "written once the directory exists", |_| true);
    assert_eq!(
        e.value("qmail_guard_entries", &[("source", "moreipme")]),
        1.0
    );
    d.wait_line("recovery line", |l| l.contains("written again"));
}

#[test]
fn status_shows_the_last_refusal_and_json_is_one_document_in_every_state() {
    let mh = scene::mail_host();
    let g = Guard::new(&mh.host);

    // Nothing attached, no state.
    let j = g.status_json();
    assert_eq!(j["attached"], false);
    assert!(j["last_refusal"].is_null() && j["error"].is_null(), "{j}");

    // Attached without a daemon: nobody reads the refusal log, and status says so.
    g.attach(&mh.cgroup);
    refuse(&mh, HOST_V4);
    let j = g.status_json();
    assert_eq!(j["attached"], true);
    assert!(j["last_refusal"].is_null() && j["daemon"].is_null(), "{j}");
    assert_eq!(j["refused_v4"], 1);
    let text = g.run_ok(&["status"]);
    assert!(
        text.lines()
            .any(|l| l == "last refusal:  not recorded (no qmail-guard run daemon)"),
        "{text}"
    );
    assert!(text.contains("attached since: "), "{text}");
    assert!(text.contains("variant; this binary's programs)"), "{text}");

    // With a daemon, before any refusal it saw (the one above was before it started).
    let mut d = Daemon::start(&g, mh.cgroup.path(), &[]);
    let text = g.run_ok(&["status"]);
    assert!(
        text.lines()
            .any(|l| l == "last refusal:  none seen by the daemon"),
        "{text}"
    );

    // Refusals seen by the daemon: the last one is shown, IPv6 then IPv4.
    let pid6 = refuse(&mh, HOST_V6);
    let mut j = serde_json::Value::Null;
    eventually("status --json to show the IPv6 refusal", || {
        j = g.status_json();
        j["last_refusal"]["pid"] == pid6
    });
    let r = &j["last_refusal"];
    assert_eq!(r["comm"], "guard-probe", "{j}");
    assert_eq!(r["family"], "ipv6", "{j}");
    assert_eq!(r["destination"], format!("[{HOST_V6}]:25"), "{j}");
    assert_eq!(r["source"], "interface", "{j}");
    let pid4 = refuse(&mh, HOST_V4);
    eventually("status --json to show the IPv4 refusal", || {
        j = g.status_json();
        j["last_refusal"]["pid"] == pid4
    });
    assert_eq!(j["last_refusal"]["destination"], format!("{HOST_V4}:25"));
    let t = j["last_refusal"]["unix_time"].as_u64().expect("unix_time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(t <= now && t + 60 >= now, "time {t} vs now {now}");
    let text = g.run_ok(&["status"]);
    let line = text
        .lines()
        .find(|l| l.starts_with("last refusal:  "))
        .unwrap_or_else(|| panic!("no last refusal line:\n{text}"));
    for part in [
        format!("pid {pid4} "),
        "comm guard-probe ".to_string(),
        format!("to {HOST_V4}:25 (interface)"),
    ] {
        assert!(line.contains(&part), "{part:?} missing from {line:?}");
    }

    // The daemon gone: the last refusal stays, the document still parses.
    d.kill9();
    let j = g.status_json();
    assert_eq!(j["last_refusal"]["pid"], pid4, "{j}");
    assert_eq!(j["daemon"]["running"], false, "{j}");

    // Detached altogether: one document, not attached, exit 0.
    let cg = mh.cgroup.path().to_str().expect("UTF-8");
    g.run_ok(&["detach", "--cgroup", cg]);
    let j = g.status_json();
    assert_eq!(j["attached"], false, "{j}");
    assert!(j["error"].is_null(), "{j}");
    assert!(j.get("last_refusal").is_some(), "{j}");
}
