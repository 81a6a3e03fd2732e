//! qmail-guard: attach, detach, sync, run, status, print and check of the kernel guard.

use std::{collections::BTreeSet, process::ExitCode};

use anyhow::{Context as _, Result};
use args::{Cli, Command, DetachTarget, RunTarget, Target};
use clap::Parser as _;
use guard_loader::{
    self as guard, GuardError, GuardMaps, PinDir,
    attach::Detach,
    cgroup::Cgroup,
    privilege::{NEEDS_ROOT, has_bpf_privileges},
    state,
};
use ipme::IpmeSet;
use qmail_guard::{args, daemon, learn};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let check = matches!(cli.command, Command::Check { .. });
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("qmail-guard: {e:#}");
            ExitCode::from(if check { 2 } else { 1 })
        }
    }
}

fn resolve(cgroup: Option<&std::path::Path>, unit: Option<&str>) -> Result<Cgroup> {
    Ok(match (cgroup, unit) {
        (Some(path), _) => Cgroup::from_path(path)?,
        (None, Some(unit)) => Cgroup::from_unit(unit)?,
        (None, None) => anyhow::bail!("give --cgroup PATH or --unit NAME"),
    })
}

/// Refuses, with one sentence, a command that must use the pins without the privileges to.
fn require_root(command: &str, pin_dir: &std::path::Path) -> Result<()> {
    if has_bpf_privileges() {
        return Ok(());
    }
    anyhow::bail!(
        "{command} {NEEDS_ROOT} to use the pins in {}; run it as root",
        pin_dir.display()
    )
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Attach {
            target: Target { cgroup, unit },
            home,
            ports,
            pins,
            danger,
        } => {
            require_root("attach", &pins.pin_dir)?;
            let cg = resolve(cgroup.as_deref(), unit.as_deref())?;
            cg.refuse_root(danger.allow_root_cgroup)?;
            let ports: Option<BTreeSet<u16>> =
                (!ports.is_empty()).then(|| ports.into_iter().collect());
            let pins = PinDir::new(pins.pin_dir);
            // The set is computed under the pin directory's lock, after the ports are
            // validated: bad input changes nothing.
            let r = guard::attach_with(&pins, &cg, ports.as_ref(), || {
                IpmeSet::load_guarded(&home.dir()).map_err(GuardError::from)
            })?;
            // Informational only (shown by `status`): a read-only /run must not fail attach.
            let _ = state::record_sync(&pins, "attach", &r.sync);
            if let Some(u) = &r.upgrade {
                println!(
                    "qmail-guard: replaced the running programs in place (tag {} → {}, {} variant) on {} link(s){}",
                    u.from_tag.as_deref().unwrap_or("?"),
                    u.to_tag,
                    u.variants(),
                    u.links,
                    if u.migrated {
                        ", maps migrated to generations"
                    } else {
                        ""
                    }
                );
            }
            let ports: Vec<String> = GuardMaps::open(&pins)?
                .ports()?
                .iter()
                .map(u16::to_string)
                .collect();
            if r.attached.is_empty() {
                println!(
                    "qmail-guard: already attached to {} (cgroup id {})",
                    cg.path.display(),
                    cg.id
                );
            } else {
                println!(
                    "qmail-guard: attached {} to {} (cgroup id {})",
                    r.attached.join(" "),
                    cg.path.display(),
                    cg.id
                );
            }
            println!(
                "qmail-guard: {} entries ({} written, {} removed), guarded ports {}, pins in {}",
                r.sync.total,
                r.sync.upserted,
                r.sync.removed,
                ports.join(" "),
                pins.root.display()
            );
            if let Some(pid) = cg.member_in_other_netns() {
                eprintln!(
                    "qmail-guard: warning: process {pid} in {} lives in another network namespace; the set was computed from this one's interfaces and routes: run attach in that namespace (e.g. `nsenter --net=/proc/{pid}/ns/net qmail-guard attach …`)",
                    cg.path.display()
                );
            }
            println!(
                "qmail-guard: refusing with {}: {}",
                r.refusal.name(),
                r.refusal.meaning()
            );
        }
        Command::Detach {
            target: DetachTarget { cgroup, unit, all },
            pins,
        } => {
            require_root("detach", &pins.pin_dir)?;
            let pins = PinDir::new(pins.pin_dir);
            let which = if all {
                Detach::All
            } else {
                Detach::Cgroup(resolve(cgroup.as_deref(), unit.as_deref())?.id)
            };
            let n = guard::detach(&pins, which)?;
            println!("qmail-guard: removed {n} link(s)");
        }
        Command::Sync { home, learn, pins } => {
            require_root("sync", &pins.pin_dir)?;
            let home = home.dir();
            let pins = PinDir::new(pins.pin_dir);
            // An invalid control file fails here, before the spool is touched.
            let base = IpmeSet::load(&home)?;
            learn_from_spool(&home, &learn, &base);
            // Computed under the lock: a sync that waited for it never writes an older set
            // than the one another writer applied meanwhile.
            let r = guard::sync_with(&pins, || {
                IpmeSet::load_guarded(&home).map_err(GuardError::from)
            })?;
            let _ = state::record_sync(&pins, "sync", &r);
            println!(
                "qmail-guard: {} entries ({} written, {} removed), generation {}",
                r.total, r.upserted, r.removed, r.generation
            );
        }
        Command::Run {
            target: RunTarget { cgroups, units },
            home,
            ports,
            pins,
            detach_on_exit,
            resync_secs,
            metrics_file,
            metrics_interval,
            log_rate,
            danger,
            learn,
        } => {
            require_root("run", &pins.pin_dir)?;
            let ports: Option<BTreeSet<u16>> =
                (!ports.is_empty()).then(|| ports.into_iter().collect());
            if let Some(p) = &ports {
                guard::limits::check_ports(p)?;
            }
            refuse_root_targets(&cgroups, &units, danger.allow_root_cgroup)?;
            daemon::init_logging();
            daemon::run(daemon::Config {
                units,
                cgroups,
                qmail_home: home.dir(),
                ports,
                pin_dir: pins.pin_dir,
                detach_on_exit,
                resync: std::time::Duration::from_secs(resync_secs),
                log_rate,
                learn_user: learn.learn_user,
                learn_expiry: learn.learn_expiry,
                metrics_file,
                metrics_interval: std::time::Duration::from_secs(metrics_interval),
            })?;
        }
        Command::Forget { addr, home, pins } => {
            require_root("forget", &pins.pin_dir)?;
            let home = home.dir();
            let Some(l) = learn::forget(&home, addr)? else {
                anyhow::bail!(
                    "{addr} is not a learned address (`qmail-guard print` lists the set with sources)"
                );
            };
            println!("qmail-guard: forgot {addr} ({l})");
            let pins = PinDir::new(pins.pin_dir);
            if pins.maps_pinned() {
                let r = guard::sync_with(&pins, || {
                    IpmeSet::load_guarded(&home).map_err(GuardError::from)
                })?;
                let _ = state::record_sync(&pins, "forget", &r);
                println!(
                    "qmail-guard: {} entries ({} written, {} removed)",
                    r.total, r.upserted, r.removed
                );
            }
        }
        Command::Status { json: true, pins } => return Ok(status_json(&pins.pin_dir)),
        Command::Status { json: false, pins } => {
            require_root("status", &pins.pin_dir)?;
            println!("{}", guard::status(&PinDir::new(pins.pin_dir))?);
        }
        Command::Print { home, pins } => {
            let set = IpmeSet::load_guarded(&home.dir())?;
            let pins = PinDir::new(pins.pin_dir);
            if let Ok(maps) = GuardMaps::open(&pins) {
                let generation = maps.generation()?;
                let same = maps.read_v4()? == guard::encode::map_v4(&set)
                    && maps.read_v6()? == guard::encode::map_v6(&set);
                println!(
                    "# in force in {}: generation {generation}, {}",
                    pins.root.display(),
                    if same {
                        "this set"
                    } else {
                        "a different set (`qmail-guard sync` applies this one)"
                    }
                );
            }
            for e in set.entries() {
                println!("{:<43} {}", e.net.to_string(), e.source);
            }
        }
        Command::Check {
            addr,
            port,
            home,
            pins,
        } => return check(addr, port, &home.dir(), &PinDir::new(pins.pin_dir)),
    }
    Ok(ExitCode::SUCCESS)
}

/// `status --json`: exactly one JSON document on stdout whatever happens, so a monitoring
/// script always has something to parse. Not attached is a state (exit 0); any other failure
/// is reported in `error` (exit 1), never as text beside the document.
fn status_json(pin_dir: &std::path::Path) -> ExitCode {
    let pins = PinDir::new(pin_dir.to_path_buf());
    let result = require_root("status", pin_dir).and_then(|()| match guard::status(&pins) {
        Ok(st) => Ok(Some(serde_json::to_value(&st)?)),
        Err(GuardError::NotAttached(_)) => Ok(None),
        Err(e) => Err(e.into()),
    });
    let (doc, code) = match result {
        Ok(Some(mut doc)) => {
            doc["error"] = serde_json::Value::Null;
            (doc, ExitCode::SUCCESS)
        }
        // Not attached: the state file may still tell the last refusal a daemon saw.
        Ok(None) => (
            serde_json::json!({
                "attached": false,
                "pin_dir": pin_dir.display().to_string(),
                "last_refusal": state::load(&pins).last_refusal,
                "error": null,
            }),
            ExitCode::SUCCESS,
        ),
        Err(e) => (
            serde_json::json!({
                "attached": false,
                "pin_dir": pin_dir.display().to_string(),
                "last_refusal": null,
                "error": format!("{e:#}"),
            }),
            ExitCode::from(1),
        ),
    };
    println!("{doc:#}");
    code
}

/// `run`'s targets, as far as they can be resolved now: none may be the cgroup2 root unless
/// allowed (a unit resolving there is refused too: `-.slice`).
fn refuse_root_targets(
    cgroups: &[std::path::PathBuf],
    units: &[String],
    allow: bool,
) -> Result<()> {
    if allow {
        return Ok(());
    }
    let mut paths = cgroups.to_vec();
    for u in units {
        if let Ok(p) = Cgroup::unit_path(u) {
            paths.push(p);
        }
    }
    for p in paths {
        if guard::cgroup::is_root_path(&p) {
            return Err(guard::cgroup::CgroupError::Root(p).into());
        }
    }
    Ok(())
}

fn check(
    addr: std::net::IpAddr,
    port: u16,
    home: &std::path::Path,
    pins: &PinDir,
) -> Result<ExitCode> {
    let privileged = has_bpf_privileges();
    if !privileged {
        eprintln!(
            "qmail-guard: check {NEEDS_ROOT} to read the kernel's maps in {}; answering from the set computed now instead",
            pins.root.display()
        );
    }
    let (tag, guarded, basis) = if privileged && pins.maps_pinned() {
        pins.check_trusted()?;
        let maps = GuardMaps::open(pins)?;
        let guarded = maps.ports()?.contains(&port);
        (maps.lookup(addr)?, guarded, "pinned maps")
    } else {
        let set = IpmeSet::load_guarded(home).context("computing the ipme set")?;
        let tag = set.lookup(addr).map(|e| guard::encode::tag_of(&e.source));
        (
            tag,
            port == guard_common::DEFAULT_PORT,
            if privileged {
                "computed set, not attached"
            } else {
                "computed set, not the kernel's maps"
            },
        )
    };
    let me = tag.is_some_and(|t| guard_common::IpmeValue { tag: t }.is_me());
    let what = tag.map_or("not in the ipme set", guard_common::tag::name);
    let port_txt = if guarded { "guarded" } else { "not guarded" };
    if me && guarded {
        println!("refused: {addr} port {port} ({what}; port {port_txt}; {basis})");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("allowed: {addr} port {port} ({what}; port {port_txt}; {basis})");
        Ok(ExitCode::from(1))
    }
}

/// `sync`'s share of the daemon's learning: make the spool if needed, take its entries into
/// the store, one line per entry on stderr. A spool problem is reported and skipped: the rest
/// of the sync still runs.
fn learn_from_spool(home: &std::path::Path, learn: &args::Learn, base: &IpmeSet) {
    let user = match learn::User::lookup(&learn.learn_user) {
        Ok(u) => {
            if let Err(e) = learn::spool::ensure(home, &u) {
                eprintln!("qmail-guard: {e}");
            }
            Some(u)
        }
        // No such user and no spool: learning is simply not set up on this host (qmail-remote
        // has nowhere to record a detection), which is not worth a line on every sync.
        Err(e) => {
            if home.join(ipme::learn::SPOOL).exists() {
                eprintln!("qmail-guard: {e}");
            }
            None
        }
    };
    let now = ipme::learn::now_unix();
    let result = learn::sweep(
        home,
        user.as_ref(),
        base.entries(),
        now,
        learn.learn_expiry.as_secs(),
    )
    .and_then(|sweep| {
        let mut ev = sweep.events.clone();
        sweep.commit()?;
        ev.extend(learn::expire(home, now)?);
        Ok(ev)
    });
    match result {
        Ok(events) => {
            for e in events {
                eprintln!("qmail-guard: {e}");
            }
        }
        Err(e) => eprintln!("qmail-guard: {e}"),
    }
}
