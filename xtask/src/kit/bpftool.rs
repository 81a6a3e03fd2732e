//! Reading kernel state with bpftool, independently of qmail-guard's own account of it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use guard_tests::bpftool::{find_fields, lpm_entries};
use serde_json::Value;

use super::harness::attempt;
use crate::cmd;

/// `bpftool -j ARGS… PATH`, parsed.
pub fn json(args: &[&str], path: &Path) -> Result<Value> {
    let mut c = Command::new("bpftool");
    c.arg("-j").args(args).arg(path);
    let out = cmd::stdout(&mut c)?;
    if out.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&out)
        .with_context(|| format!("`{}` printed invalid JSON", cmd::display(&c)))
}

/// Refusal counters of a pinned STATS map, summed over CPUs: (IPv4, IPv6).
pub fn refused(stats: &Path) -> Result<(u64, u64)> {
    let dump = json(&["map", "dump", "pinned"], stats)?;
    let sum = |name: &str| -> Result<u64> {
        let vals = find_fields(&dump, name);
        if vals.is_empty() {
            bail!("no field {name} in the dump of {}", stats.display());
        }
        vals.iter()
            .map(|v| {
                v.as_u64()
                    .with_context(|| format!("{name} is not a number: {v}"))
            })
            .sum()
    };
    Ok((sum("refused_v4")?, sum("refused_v6")?))
}

/// The entries of a pinned IPME map as `prefix/len  tag N (name)` lines, from bpftool's
/// BTF-formatted fields.
pub fn lpm_lines(map: &Path) -> Result<Vec<String>> {
    let dump = json(&["map", "dump", "pinned"], map)?;
    let entries = attempt("reading the map dump", || lpm_entries(&dump))?;
    Ok(entries
        .iter()
        .map(|e| {
            let net = match e.data.len() {
                4 => Ipv4Addr::new(e.data[0], e.data[1], e.data[2], e.data[3]).to_string(),
                16 => {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(&e.data);
                    Ipv6Addr::from(b).to_string()
                }
                _ => format!("{:?}", e.data),
            };
            format!(
                "key {{prefix_len {}, data {net}}}  value {{tag {} = {}}}",
                e.prefix_len,
                e.tag,
                guard_common::tag::name(e.tag)
            )
        })
        .collect())
}

/// `run_time_ns` and `run_cnt` of a pinned program (present while kernel.bpf_stats_enabled=1).
pub fn prog_stats(prog: &Path) -> Result<(u64, u64)> {
    let v = json(&["prog", "show", "pinned"], prog)?;
    let get = |k: &str| v[k].as_u64().unwrap_or(0);
    Ok((get("run_time_ns"), get("run_cnt")))
}
