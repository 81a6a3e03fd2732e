//! `cargo xtask test --kernel NAME…`: the real-kernel integration tests on Debian's kernels,
//! each booted under QEMU with this machine's userland and build (README: "Other kernels").

mod cache;
mod fetch;
pub mod guest;
mod initramfs;
mod kernel;
mod plan;
mod qemu;
mod select;
mod sources;
mod unpack;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

pub use kernel::KernelSpec;
use plan::{Group, Plan};

/// Wall-clock limit of one boot, tests included; the selection takes well under it.
const TIMEOUT: Duration = Duration::from_secs(20 * 60);
const MEMORY_MIB: u32 = 2048;
const CPUS: u32 = 2;

/// Per-kernel summary, printed as the run's last lines.
struct Report {
    name: &'static str,
    package: String,
    outcome: Result<qemu::Outcome>,
}

/// Boots each kernel in turn and runs the VM test selection; `tests` maps test target names
/// to their built executables, `env` is the tests' environment (binary dir, PATH).
pub fn run(
    kernels: &[KernelSpec],
    xtask: &Path,
    tests: &HashMap<String, PathBuf>,
    env: Vec<(String, String)>,
    run_dir: &Path,
) -> Result<()> {
    let cache = cache::dir()?;
    let hosts = sources::DebianHosts::from_system();
    let mut reports = Vec::new();
    for spec in kernels {
        println!("==> kernel {} (Debian {})", spec.name, spec.suite);
        let prepared = prepare(spec, &cache, &hosts, run_dir);
        let (package, outcome) = match prepared {
            Ok(k) => {
                let label = k.package.name.clone();
                let groups = groups(tests)?;
                let outcome = boot(spec, &k, xtask, groups, env.clone(), run_dir);
                (format!("{} {}", label, k.package.version), outcome)
            }
            Err(e) => (String::from("-"), Err(e)),
        };
        reports.push(Report {
            name: spec.name,
            package,
            outcome,
        });
    }
    summarise(&reports)
}

struct Prepared {
    package: fetch::Package,
    unpacked: unpack::Unpacked,
    initramfs: PathBuf,
}

/// Resolves, downloads (once), unpacks (once) and builds the initramfs.
fn prepare(
    spec: &KernelSpec,
    cache: &Path,
    hosts: &sources::DebianHosts,
    run_dir: &Path,
) -> Result<Prepared> {
    let apt = fetch::PrivateApt::new(cache, spec.suite, hosts)?;
    let unpacked = match apt.update().and_then(|()| apt.newest(spec)) {
        Ok(pkg) => {
            let dir = cache.join(pkg.dir_name());
            match unpack::cached(&dir, &pkg) {
                Some(u) => {
                    println!("ok: {} {} (cached)", pkg.name, pkg.version);
                    u
                }
                None => {
                    println!("downloading {} {} …", pkg.name, pkg.version);
                    let debs = cache.join("debs");
                    let deb = apt.download(&pkg, &debs)?;
                    let u = unpack::unpack(&deb, &dir, &pkg)?;
                    // The unpacked tree is what the runs use; the .deb is not needed again.
                    let _ = fs::remove_file(&deb);
                    u
                }
            }
        }
        Err(e) => {
            // Offline: the newest kernel of this release already in the cache will do.
            let Some(u) = newest_cached(cache, spec) else {
                return Err(e).context(format!(
                    "cannot resolve {} and none is cached in {}",
                    spec.name,
                    cache.display()
                ));
            };
            eprintln!(
                "warning: cannot look up the newest {} kernel ({e:#}); using the cached {} {}",
                spec.name, u.package.name, u.package.version
            );
            u
        }
    };
    let initramfs = run_dir.join(format!("{}.initramfs.cpio", spec.name));
    initramfs::build(&unpacked.modules(), &initramfs)?;
    Ok(Prepared {
        package: unpacked.package.clone(),
        unpacked,
        initramfs,
    })
}

fn newest_cached(cache: &Path, spec: &KernelSpec) -> Option<unpack::Unpacked> {
    let rd = fs::read_dir(cache).ok()?;
    let mut found: Vec<(u32, unpack::Unpacked)> = Vec::new();
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((pkg, ver)) = name.split_once('_') else {
            continue;
        };
        let Some(abi) = spec.abi_number(pkg) else {
            continue;
        };
        let p = fetch::Package {
            name: pkg.to_string(),
            version: ver.replace("%3a", ":"),
        };
        if let Some(u) = unpack::cached(&e.path(), &p) {
            found.push((abi, u));
        }
    }
    found
        .into_iter()
        .max_by_key(|(abi, _)| *abi)
        .map(|(_, u)| u)
}

fn groups(tests: &HashMap<String, PathBuf>) -> Result<Vec<Group>> {
    select::VM_TESTS
        .iter()
        .map(|(target, names)| {
            let program = tests
                .get(*target)
                .with_context(|| format!("test target {target} was not built"))?;
            Ok(Group {
                name: target.to_string(),
                program: program.clone(),
                args: select::args(names, CPUS),
            })
        })
        .collect()
}

fn boot(
    spec: &KernelSpec,
    k: &Prepared,
    xtask: &Path,
    groups: Vec<Group>,
    env: Vec<(String, String)>,
    run_dir: &Path,
) -> Result<qemu::Outcome> {
    let plan = Plan {
        release: k.unpacked.release.clone(),
        modules: k.unpacked.modules(),
        env,
        groups,
    };
    let plan_path = run_dir.join(format!("{}.plan.json", spec.name));
    fs::write(&plan_path, plan.to_json())
        .with_context(|| format!("cannot write {}", plan_path.display()))?;
    let console_log = run_dir.join(format!("{}.console.log", spec.name));
    println!(
        "booting {} ({}) under QEMU/TCG; console log {}",
        k.unpacked.release,
        k.package.version,
        console_log.display()
    );
    qemu::boot(&qemu::Boot {
        label: spec.name,
        kernel: &k.unpacked.vmlinuz(),
        initramfs: &k.initramfs,
        init: xtask,
        plan: &plan_path,
        console_log: &console_log,
        memory_mib: MEMORY_MIB,
        cpus: CPUS,
        timeout: TIMEOUT,
    })
}

fn summarise(reports: &[Report]) -> Result<()> {
    println!("\nkernel tests:");
    let mut failed = Vec::new();
    for r in reports {
        match &r.outcome {
            Ok(o) => {
                let secs = |d: Option<Duration>| {
                    d.map(|d| format!("{:.1} s", d.as_secs_f64()))
                        .unwrap_or_else(|| "-".into())
                };
                let verdict = if o.passed() { "PASS" } else { "FAIL" };
                println!(
                    "  {:<9} {verdict}  boot {}  tests {}  ({})",
                    r.name,
                    secs(o.boot),
                    secs(o.tests),
                    r.package
                );
                for (g, ok, s) in &o.results {
                    println!(
                        "      {:<20} {} {s:.1} s",
                        g,
                        if *ok { "pass" } else { "FAIL" }
                    );
                }
                if let Some(e) = &o.error {
                    println!("      error: {e}");
                }
                if !o.passed() {
                    failed.push(r.name);
                }
            }
            Err(e) => {
                println!("  {:<9} FAIL  {e:#}", r.name);
                failed.push(r.name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("kernel tests failed on {}", failed.join(", "));
    }
    Ok(())
}
