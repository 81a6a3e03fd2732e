//! The kernels `cargo xtask test --kernel NAME` knows: a Debian release's suite and the ABI
//! prefix of its `linux-image-<abi>-<n>-amd64` packages.

use anyhow::{Result, bail};

/// A kernel name on the command line, resolved against a Debian suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSpec {
    /// What the user typed: `debian12`.
    pub name: &'static str,
    /// The Debian suite whose archive carries the kernel.
    pub suite: &'static str,
    /// Package names are `linux-image-{abi}-{n}-amd64`; the newest `n` wins.
    pub abi: &'static str,
}

pub const KNOWN: &[KernelSpec] = &[
    KernelSpec {
        name: "debian12",
        suite: "bookworm",
        abi: "6.1.0",
    },
    KernelSpec {
        name: "debian11",
        suite: "bullseye",
        abi: "5.10.0",
    },
];

impl KernelSpec {
    pub fn parse(name: &str) -> Result<KernelSpec> {
        match KNOWN.iter().find(|k| k.name == name) {
            Some(k) => Ok(*k),
            None => bail!(
                "unknown kernel {name:?}: choose one of {}",
                KNOWN.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// The ABI number `n` if `package` is one of this release's generic amd64 images
    /// (`linux-image-6.1.0-28-amd64`; not -cloud, -rt, -dbg or -unsigned).
    pub fn abi_number(&self, package: &str) -> Option<u32> {
        let rest = package.strip_prefix("linux-image-")?;
        let rest = rest.strip_prefix(self.abi)?.strip_prefix('-')?;
        let n = rest.strip_suffix("-amd64")?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse().ok()
    }
}

/// The newest package of `spec` among `names`.
pub fn newest<'a>(spec: &KernelSpec, names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names
        .into_iter()
        .filter_map(|n| spec.abi_number(n).map(|abi| (abi, n)))
        .max_by_key(|&(abi, _)| abi)
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_generic_image_wins() {
        let s = KernelSpec::parse("debian12").unwrap();
        let names = [
            "linux-image-6.1.0-9-amd64",
            "linux-image-6.1.0-48-amd64-unsigned",
            "linux-image-6.1.0-47-amd64",
            "linux-image-6.1.0-48-cloud-amd64",
            "linux-image-6.1.0-48-rt-amd64",
            "linux-image-6.1.0-48-amd64-dbg",
            "linux-image-5.10.0-50-amd64",
            "linux-image-6.1.0--amd64",
        ];
        assert_eq!(newest(&s, names), Some("linux-image-6.1.0-47-amd64"));
    }

    #[test]
    fn unknown_names_are_refused_with_the_choices() {
        let e = KernelSpec::parse("debian13").unwrap_err().to_string();
        assert!(e.contains("debian12, debian11"), "{e}");
    }
}
