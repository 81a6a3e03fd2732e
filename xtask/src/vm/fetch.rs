//! Resolving a kernel name to the newest Debian package and fetching it into the cache, with
//! apt run against a private sources list and state directory: the system's apt setup (its
//! sources, lists and locks) is never touched, and any Debian suite can be used.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::kernel::{self, KernelSpec};
use super::sources::DebianHosts;
use crate::cmd;

/// A resolved package: `linux-image-6.1.0-28-amd64` at `6.1.119-1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
}

impl Package {
    /// The cache directory's name for this package (no `:` from an epoch).
    pub fn dir_name(&self) -> String {
        format!("{}_{}", self.name, self.version.replace(':', "%3a"))
    }
}

/// apt confined to `root`: its own sources list, lists, archive cache and empty dpkg status.
pub struct PrivateApt {
    root: PathBuf,
}

impl PrivateApt {
    pub fn new(cache: &Path, suite: &str, hosts: &DebianHosts) -> Result<PrivateApt> {
        let root = cache.join("apt").join(suite);
        for d in [
            "lists/partial",
            "archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            let p = root.join(d);
            fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        }
        let write = |name: &str, text: &str| {
            let p = root.join(name);
            fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
        };
        write("sources.list", &hosts.sources_list(suite))?;
        write("status", "")?;
        Ok(PrivateApt { root })
    }

    fn command(&self, program: &str) -> Command {
        let r = |p: &str| self.root.join(p).display().to_string();
        let mut c = Command::new(program);
        for (k, v) in [
            ("Dir::Etc::sourcelist", r("sources.list")),
            ("Dir::Etc::sourceparts", r("sources.list.d")),
            ("Dir::Etc::preferences", r("preferences")),
            ("Dir::Etc::preferencesparts", r("preferences.d")),
            ("Dir::State::Lists", r("lists")),
            ("Dir::State::status", r("status")),
            ("Dir::Cache", r("cache")),
            ("Dir::Cache::archives", r("archives")),
            ("APT::Architectures", "amd64".into()),
            // Files live in root's cache, which the _apt sandbox user cannot write.
            ("APT::Sandbox::User", "root".into()),
            ("Acquire::Languages", "none".into()),
            (
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled",
                "false".into(),
            ),
            (
                "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled",
                "false".into(),
            ),
            (
                "Acquire::IndexTargets::deb::CNF::DefaultEnabled",
                "false".into(),
            ),
        ] {
            c.arg("-o").arg(format!("{k}={v}"));
        }
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    pub fn update(&self) -> Result<()> {
        cmd::stdout(self.command("apt-get").args(["update", "-q"])).map(drop)
    }

    /// The newest package of `spec` in the fetched lists, with its candidate version.
    pub fn newest(&self, spec: &KernelSpec) -> Result<Package> {
        let prefix = format!("linux-image-{}-", spec.abi);
        let names = cmd::stdout(self.command("apt-cache").args(["pkgnames", &prefix]))?;
        let Some(name) = kernel::newest(spec, names.lines()) else {
            bail!(
                "the {} archive lists no linux-image-{}-N-amd64 package",
                spec.suite,
                spec.abi
            );
        };
        let show =
            cmd::stdout(
                self.command("apt-cache")
                    .args(["show", "--no-all-versions", name]),
            )?;
        let version = show
            .lines()
            .find_map(|l| l.strip_prefix("Version:"))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("`apt-cache show {name}` printed no Version"))?;
        Ok(Package {
            name: name.to_string(),
            version,
        })
    }

    /// Downloads `pkg` into `dir` and returns the .deb's path.
    pub fn download(&self, pkg: &Package, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let spec = format!("{}={}", pkg.name, pkg.version);
        cmd::stdout(
            self.command("apt-get")
                .args(["download", "-q", &spec])
                .current_dir(dir),
        )?;
        let prefix = format!("{}_", pkg.name);
        let found = fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            });
        found.with_context(|| {
            format!(
                "`apt-get download {spec}` left no {prefix}*.deb in {}",
                dir.display()
            )
        })
    }
}
