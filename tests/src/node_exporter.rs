//! A real Prometheus node_exporter reading the metrics file with its textfile collector: the
//! files of Debian's prometheus-node-exporter package, unpacked by `cargo xtask setup`
//! (apt-get download + dpkg-deb -x) into a directory of our own, never installed (the package
//! would start a service). It listens on an ephemeral loopback port and is scraped over HTTP.
//!
//! Layout: `BASE/VERSION/`, `BASE/current` → the version in use. BASE is
//! `$QMAIL_GUARD_NODE_EXPORTER_DIR`, else `$XDG_DATA_HOME/qmail-guard/node-exporter`, else
//! `~/.local/share/qmail-guard/node-exporter`.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Overrides the base directory (tests and setup read the same variable).
pub const DIR_ENV: &str = "QMAIL_GUARD_NODE_EXPORTER_DIR";
/// The Debian package whose files are unpacked.
pub const PACKAGE: &str = "prometheus-node-exporter";
/// The binary inside an unpacked package.
pub const BINARY: &str = "usr/bin/prometheus-node-exporter";

fn env(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The base directory (it may not exist yet).
pub fn base_dir() -> Result<PathBuf, String> {
    if let Some(d) = env(DIR_ENV) {
        return Ok(d);
    }
    let data = match env("XDG_DATA_HOME") {
        Some(p) if p.is_absolute() => p,
        _ => env("HOME")
            .ok_or_else(|| format!("neither {DIR_ENV} nor HOME is set: cannot locate {PACKAGE}"))?
            .join(".local/share"),
    };
    Ok(data.join("qmail-guard").join("node-exporter"))
}

/// The unpacked package in use (`BASE/current`, resolved).
pub fn current() -> Result<PathBuf, String> {
    let link = base_dir()?.join("current");
    match link.canonicalize() {
        Ok(p) if p.join(BINARY).is_file() => Ok(p),
        _ => Err(format!(
            "{} does not exist: run `cargo xtask setup` (it unpacks {PACKAGE} there without installing it)",
            link.join(BINARY).display()
        )),
    }
}

/// A running node_exporter with only the textfile collector; killed on drop.
pub struct NodeExporter {
    child: Child,
    port: u16,
}

impl NodeExporter {
    /// Starts it on `dir` and waits until it answers (panics after 30 s, with its stderr).
    pub fn start(dir: &Path) -> NodeExporter {
        let bin = current().unwrap_or_else(|e| panic!("{e}")).join(BINARY);
        // An ephemeral port the kernel just handed out; a clash is possible but only fails this
        // start, loudly.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("an ephemeral loopback port")
            .port();
        let child = Command::new(&bin)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--collector.disable-defaults")
            .arg("--collector.textfile")
            .arg(format!("--collector.textfile.directory={}", dir.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut ne = NodeExporter { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while ne.try_scrape().is_none() {
            if let Ok(Some(st)) = ne.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = ne.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("node_exporter exited ({st}) before answering:\n{err}");
            }
            assert!(
                Instant::now() < deadline,
                "node_exporter did not answer on 127.0.0.1:{port} within 30 s"
            );
            thread::sleep(Duration::from_millis(50));
        }
        ne
    }

    fn try_scrape(&self) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let (head, body) = resp.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.0 200")
            .then(|| body.to_string())
            .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_string()))
    }

    /// GET /metrics: the body of a 200 answer.
    pub fn scrape(&self) -> String {
        self.try_scrape()
            .unwrap_or_else(|| panic!("scraping node_exporter on 127.0.0.1:{} failed", self.port))
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
