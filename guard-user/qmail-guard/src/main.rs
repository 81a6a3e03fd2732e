//! qmail-guard: attach, detach, sync, run, status, print and check of the kernel guard.

use std::{collections::BTreeSet, process::ExitCode};

use anyhow::{Context as _, Result};
use args::{Cli, Command, DetachTarget, RunTarget, Target};
use clap::Parser as _;
use guard_loader::{self as guard, GuardMaps, PinDir, attach::Detach, cgroup::Cgroup, state};
use ipme::IpmeSet;
use qmail_guard::{args, daemon};

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

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Attach {
            target: Target { cgroup, unit },
            home,
            ports,
            pins,
        } => {
            let cg = resolve(cgroup.as_deref(), unit.as_deref())?;
            // The set is computed before anything is touched: bad input changes nothing.
            let set = IpmeSet::load(&home.dir())?;
            let ports: BTreeSet<u16> = ports.into_iter().collect();
            let pins = PinDir::new(pins.pin_dir);
            let r = guard::attach(&pins, &cg, &set, &ports)?;
            // Informational only (shown by `status`): a read-only /run must not fail attach.
            let _ = state::record_sync(&pins, "attach", &r.sync);
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
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
        }
        Command::Detach {
            target: DetachTarget { cgroup, unit, all },
            pins,
        } => {
            let pins = PinDir::new(pins.pin_dir);
            let which = if all {
                Detach::All
            } else {
                Detach::Cgroup(resolve(cgroup.as_deref(), unit.as_deref())?.id)
            };
            let n = guard::detach(&pins, which)?;
            println!("qmail-guard: removed {n} link(s)");
        }
        Command::Sync { home, pins } => {
            let pins = PinDir::new(pins.pin_dir);
            let mut maps = GuardMaps::open(&pins)?;
            let set = IpmeSet::load(&home.dir())?;
            let r = {
                let _lock = pins.lock()?;
                maps.sync(&set)?
            };
            let _ = state::record_sync(&pins, "sync", &r);
            println!(
                "qmail-guard: {} entries ({} written, {} removed)",
                r.total, r.upserted, r.removed
            );
        }
        Command::Run {
            target: RunTarget { cgroups, units },
            home,
            ports,
            pins,
            detach_on_exit,
            resync_secs,
        } => {
            daemon::init_logging();
            daemon::run(daemon::Config {
                units,
                cgroups,
                qmail_home: home.dir(),
                ports: ports.into_iter().collect(),
                pin_dir: pins.pin_dir,
                detach_on_exit,
                resync: std::time::Duration::from_secs(resync_secs),
            })?;
        }
        Command::Status { json, pins } => {
            let st = guard::status(&PinDir::new(pins.pin_dir))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                println!("{st}");
            }
        }
        Command::Print { home } => {
            let set = IpmeSet::load(&home.dir())?;
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

fn check(
    addr: std::net::IpAddr,
    port: u16,
    home: &std::path::Path,
    pins: &PinDir,
) -> Result<ExitCode> {
    let (tag, guarded, basis) = if pins.maps_pinned() {
        let maps = GuardMaps::open(pins)?;
        let guarded = maps.ports()?.contains(&port);
        (maps.lookup(addr)?, guarded, "pinned maps")
    } else {
        let set = IpmeSet::load(home).context("computing the ipme set")?;
        let tag = set.lookup(addr).map(|e| guard::encode::tag_of(&e.source));
        (
            tag,
            port == guard_common::DEFAULT_PORT,
            "computed set, not attached",
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
