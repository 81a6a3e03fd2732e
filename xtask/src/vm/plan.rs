//! What the guest runs: written by the host as JSON next to the run's console log, read by
//! `xtask vm-guest` inside the VM (the host's filesystem is the guest's, so paths agree).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

/// One test executable with its arguments (test names, thread count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `uname -r` the guest must report, so a wrong boot is caught.
    pub release: String,
    /// The package's `lib/modules/<release>` (in the host cache), bound over the guest's.
    pub modules: PathBuf,
    pub env: Vec<(String, String)>,
    pub groups: Vec<Group>,
}

impl Plan {
    pub fn to_json(&self) -> String {
        let groups: Vec<Value> = self
            .groups
            .iter()
            .map(|g| json!({"name": g.name, "program": g.program, "args": g.args}))
            .collect();
        json!({
            "release": self.release,
            "modules": self.modules,
            "env": self.env,
            "groups": groups,
        })
        .to_string()
    }

    pub fn from_json(text: &str) -> Result<Plan> {
        let v: Value = serde_json::from_str(text).context("the plan is not JSON")?;
        let s = |v: &Value, k: &str| -> Result<String> {
            v[k].as_str()
                .map(str::to_string)
                .with_context(|| format!("the plan has no string {k:?}"))
        };
        let strings = |v: &Value| -> Result<Vec<String>> {
            v.as_array()
                .context("the plan has a non-array where a list belongs")?
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .context("non-string in the plan")
                })
                .collect()
        };
        let mut env = Vec::new();
        for pair in v["env"].as_array().context("the plan has no env list")? {
            let p = strings(pair)?;
            let [k, val] = <[String; 2]>::try_from(p)
                .map_err(|_| anyhow::anyhow!("an env entry of the plan is not a pair"))?;
            env.push((k, val));
        }
        let mut groups = Vec::new();
        for g in v["groups"]
            .as_array()
            .context("the plan has no groups list")?
        {
            groups.push(Group {
                name: s(g, "name")?,
                program: PathBuf::from(s(g, "program")?),
                args: strings(&g["args"])?,
            });
        }
        Ok(Plan {
            release: s(&v, "release")?,
            modules: PathBuf::from(s(&v, "modules")?),
            env,
            groups,
        })
    }

    pub fn read(path: &Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Plan::from_json(&text).with_context(|| format!("bad plan {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = Plan {
            release: "6.1.0-28-amd64".into(),
            modules: "/c/lib/modules/6.1.0-28-amd64".into(),
            env: vec![("A".into(), "b c".into())],
            groups: vec![Group {
                name: "guard".into(),
                program: "/t/debug/deps/guard-1".into(),
                args: vec!["--exact".into(), "x".into()],
            }],
        };
        assert_eq!(Plan::from_json(&p.to_json()).unwrap(), p);
    }
}
