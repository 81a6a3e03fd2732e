//! Independent inspection of kernel state with bpftool's JSON output, so tests check what is
//! really attached and stored, not what qmail-guard says about itself.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::cmd;

fn json(args: &[&str], path: &Path) -> Value {
    let mut c = Command::new("bpftool");
    c.arg("-j").args(args).arg(path);
    let out = cmd::run_ok(&mut c);
    // bpftool prints nothing at all for an empty cgroup on some versions.
    if out.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("`{}` printed invalid JSON ({e}): {out}", cmd::describe(&c)))
}

/// `bpftool -j map dump pinned PATH`.
pub fn map_dump(pinned: &Path) -> Value {
    json(&["map", "dump", "pinned"], pinned)
}

/// How many programs are attached to `cgroup` on the connect4 and connect6 hooks.
///
/// Asked of the kernel with BPF_PROG_QUERY, not `bpftool cgroup show`: Debian 12's bpftool
/// fails (exit 255, no message) listing a cgroup with programs on Linux 5.10, where it queries
/// attach types that kernel does not know.
pub fn connect_hook_counts(cgroup: &Path) -> (usize, usize) {
    let (v4, v6) = connect_hook_programs(cgroup);
    (v4.len(), v6.len())
}

/// The ids of the programs attached to `cgroup`'s connect4 and connect6 hooks (BPF_PROG_QUERY,
/// as [`connect_hook_counts`]).
pub fn connect_hook_programs(cgroup: &Path) -> (Vec<u64>, Vec<u64>) {
    const BPF_CGROUP_INET4_CONNECT: u32 = 10;
    const BPF_CGROUP_INET6_CONNECT: u32 = 11;
    (
        prog_query(cgroup, BPF_CGROUP_INET4_CONNECT),
        prog_query(cgroup, BPF_CGROUP_INET6_CONNECT),
    )
}

/// The `query` member of `union bpf_attr`, up to `prog_cnt` (the kernel takes a shorter attr).
#[repr(C)]
#[derive(Default)]
struct ProgQuery {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// Ids of the programs attached directly to `cgroup` for `attach_type` (not inherited ones).
fn prog_query(cgroup: &Path, attach_type: u32) -> Vec<u64> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    let dir = std::fs::File::open(cgroup)
        .unwrap_or_else(|e| panic!("cannot open cgroup {}: {e}", cgroup.display()));
    let mut ids = [0u32; 64];
    let mut attr = ProgQuery {
        target_fd: std::os::fd::AsRawFd::as_raw_fd(&dir) as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..ProgQuery::default()
    };
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix of the size passed; prog_ids
    // points to prog_cnt writable u32s that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut attr as *mut ProgQuery,
            std::mem::size_of::<ProgQuery>(),
        )
    };
    assert!(
        r == 0,
        "BPF_PROG_QUERY on {} (attach type {attach_type}) failed: {}",
        cgroup.display(),
        std::io::Error::last_os_error()
    );
    ids.iter()
        .take(attr.prog_cnt as usize)
        .map(|&id| u64::from(id))
        .collect()
}

/// `bpftool -j map show pinned PATH`'s map id: stays the same while the map is updated in
/// place, changes if the map is replaced.
pub fn map_id(pinned: &Path) -> u64 {
    let v = json(&["map", "show", "pinned"], pinned);
    v["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("bpftool map show {}: no id in {v}", pinned.display()))
}

/// `bpftool -j prog show pinned PATH`'s tag (16 hex digits, the kernel's hash of the program).
pub fn prog_tag(pinned: &Path) -> String {
    let v = json(&["prog", "show", "pinned"], pinned);
    v["tag"]
        .as_str()
        .unwrap_or_else(|| panic!("bpftool prog show {}: no tag in {v}", pinned.display()))
        .to_string()
}

/// One LPM trie entry as bpftool formats it from BTF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LpmEntry {
    pub prefix_len: u32,
    pub data: Vec<u8>,
    pub tag: u32,
}

/// The entries of an IPME map dump, read from bpftool's BTF-`formatted` fields (so this also
/// checks that those named fields exist). Panics if an entry is not formatted that way.
pub fn lpm_entries(dump: &Value) -> Vec<LpmEntry> {
    let entries = dump.as_array().expect("a map dump is an array");
    entries
        .iter()
        .map(|e| {
            let f = &e["formatted"];
            let parsed = (|| {
                Some(LpmEntry {
                    prefix_len: f["key"]["prefix_len"].as_u64()? as u32,
                    data: f["key"]["data"]
                        .as_array()?
                        .iter()
                        .map(|b| b.as_u64().map(|b| b as u8))
                        .collect::<Option<_>>()?,
                    tag: f["value"]["tag"].as_u64()? as u32,
                })
            })();
            parsed.unwrap_or_else(|| panic!("map entry without BTF-named fields: {e}"))
        })
        .collect()
}

/// The sum over CPUs of field `name` in a per-CPU array dump (e.g. STATS' `refused_v4`).
pub fn percpu_sum(dump: &Value, name: &str) -> u64 {
    let vals = find_fields(dump, name);
    assert!(!vals.is_empty(), "no field {name} in {dump}");
    vals.iter()
        .map(|v| {
            v.as_u64()
                .unwrap_or_else(|| panic!("{name} is not a number: {v}"))
        })
        .sum()
}

/// Every object anywhere in `v` that has a field `name`, with that field's value.
pub fn find_fields<'a>(v: &'a Value, name: &str) -> Vec<&'a Value> {
    let mut out = Vec::new();
    collect(v, name, &mut out);
    out
}

fn collect<'a>(v: &'a Value, name: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            if let Some(f) = m.get(name) {
                out.push(f);
            }
            for x in m.values() {
                collect(x, name, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect(x, name, out)),
        _ => {}
    }
}

/// `bpftool -j prog show pinned PATH`: (id, tag) of a pinned program.
pub fn prog_id_tag(pinned: &Path) -> (u64, String) {
    let v = json(&["prog", "show", "pinned"], pinned);
    let id = v["id"].as_u64().unwrap_or_else(|| {
        panic!(
            "bpftool prog show pinned {}: no id in {v}",
            pinned.display()
        )
    });
    (id, v["tag"].as_str().unwrap_or_default().to_string())
}

/// `bpftool -j prog show id ID`'s tag.
pub fn prog_tag_by_id(id: u64) -> String {
    let mut c = Command::new("bpftool");
    c.args(["-j", "prog", "show", "id", &id.to_string()]);
    let out = cmd::run_ok(&mut c);
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("`{}` printed invalid JSON ({e}): {out}", cmd::describe(&c)));
    v["tag"]
        .as_str()
        .unwrap_or_else(|| panic!("bpftool prog show id {id}: no tag in {v}"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_formatted_lpm_entries_and_percpu_sums() {
        // Shapes as bpftool 7.1 prints them for BTF maps.
        let dump: Value = serde_json::json!([
            {"key": ["0x18"], "value": ["0x05"],
             "formatted": {"key": {"prefix_len": 24, "data": [203, 0, 113, 0]},
                           "value": {"tag": 5}}}
        ]);
        assert_eq!(
            lpm_entries(&dump),
            vec![LpmEntry {
                prefix_len: 24,
                data: vec![203, 0, 113, 0],
                tag: 5
            }]
        );
        let stats: Value = serde_json::json!([{"formatted": {"key": 0, "values": [
            {"cpu": 0, "value": {"refused_v4": 2, "refused_v6": 0}},
            {"cpu": 1, "value": {"refused_v4": 3, "refused_v6": 1}}
        ]}}]);
        assert_eq!(percpu_sum(&stats, "refused_v4"), 5);
        assert_eq!(percpu_sum(&stats, "refused_v6"), 1);
    }

    #[test]
    #[should_panic(expected = "without BTF-named fields")]
    fn unformatted_entries_are_rejected() {
        lpm_entries(&serde_json::json!([{"key": ["0x18"], "value": ["0x05"]}]));
    }

    #[test]
    fn finds_nested_fields() {
        let v: Value = serde_json::json!([
            {"formatted": {"value": {"tag": 5}}},
            {"formatted": {"value": {"tag": 1}}}
        ]);
        let tags: Vec<_> = find_fields(&v, "tag").iter().map(|t| t.as_u64()).collect();
        assert_eq!(tags, vec![Some(5), Some(1)]);
    }
}
