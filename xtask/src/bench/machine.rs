//! One line saying where and on what the numbers were taken.

use std::process::Command;

use crate::workspace;

fn first_line(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

/// CPU model, CPU count, kernel, commit, UTC date, and the load average when the run ended
/// (other work on the machine widens every spread; a loaded run is not one to quote).
pub fn describe() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    let git = |args: &[&str]| {
        first_line(
            Command::new("git")
                .args(args)
                .current_dir(workspace::root()),
        )
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some();
    let date =
        first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    // "1-min 5-min 15-min running/total last-pid"
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(format!(
                ", load average {} (1 min) / {} (15 min) at the end",
                f.first()?,
                f.get(2)?
            ))
        })
        .unwrap_or_default();
    format!(
        "{cpu}, {cpus} CPUs, Linux {kernel}, commit {commit}{}, {date}{load}",
        if dirty { " + uncommitted changes" } else { "" }
    )
}
