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

/// `bpftool -j cgroup show PATH`: the programs attached to exactly this cgroup.
pub fn cgroup_show(cgroup: &Path) -> Vec<Value> {
    match json(&["cgroup", "show"], cgroup) {
        Value::Array(v) => v,
        other => panic!("bpftool cgroup show: expected an array, got {other}"),
    }
}

/// Whether a `bpftool cgroup show` entry is a connect4 (`v6 == false`) or connect6 hook.
/// bpftool spells attach types `cgroup_inet4_connect` (libbpf names) or `connect4` (older).
fn is_connect_hook(entry: &Value, v6: bool) -> bool {
    let t = entry["attach_type"].as_str().unwrap_or("");
    let (libbpf, short) = if v6 {
        ("cgroup_inet6_connect", "connect6")
    } else {
        ("cgroup_inet4_connect", "connect4")
    };
    t == libbpf || t == short
}

/// How many programs are attached to `cgroup` on the connect4 and connect6 hooks.
pub fn connect_hook_counts(cgroup: &Path) -> (usize, usize) {
    let entries = cgroup_show(cgroup);
    let v4 = entries.iter().filter(|e| is_connect_hook(e, false)).count();
    let v6 = entries.iter().filter(|e| is_connect_hook(e, true)).count();
    (v4, v6)
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

/// The ids of the programs attached to `cgroup`'s connect4 and connect6 hooks.
pub fn connect_hook_programs(cgroup: &Path) -> (Vec<u64>, Vec<u64>) {
    let entries = cgroup_show(cgroup);
    let ids = |v6| {
        entries
            .iter()
            .filter(|e| is_connect_hook(e, v6))
            .filter_map(|e| e["id"].as_u64())
            .collect()
    };
    (ids(false), ids(true))
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
    fn classifies_both_attach_type_spellings() {
        let e4: Value = serde_json::json!({"attach_type": "cgroup_inet4_connect"});
        let e6: Value = serde_json::json!({"attach_type": "connect6"});
        assert!(is_connect_hook(&e4, false) && !is_connect_hook(&e4, true));
        assert!(is_connect_hook(&e6, true) && !is_connect_hook(&e6, false));
    }

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
