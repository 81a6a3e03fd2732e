//! The private Exim the tests and the demo run as their MTA: Debian's exim4-daemon-light
//! fetched with `apt-get download` and unpacked with `dpkg-deb -x` into a directory of our own
//! (guard_tests::exim_prefix says where), never installed. Only its shared libraries are
//! installed, as plain packages. Kept while its binary's libraries all resolve.

use anyhow::Result;
use guard_tests::exim_prefix::{self, BINARY, PACKAGE};

use crate::unpacked::{self, Unpacked};

/// Makes sure the private Exim is unpacked and its libraries are installed.
pub fn ensure() -> Result<()> {
    unpacked::ensure(&Unpacked {
        what: "private Exim",
        package: PACKAGE,
        binary: BINARY,
        base: exim_prefix::base_dir()?,
        current: exim_prefix::current().ok(),
    })
}

/// The shared-library packages in a Depends field: the first alternative of each entry whose
/// name starts with `lib`, without version or architecture qualifiers.
pub fn library_depends(depends: &str) -> Vec<String> {
    depends
        .split(',')
        .filter_map(|entry| entry.split('|').next())
        .filter_map(|alt| alt.split_whitespace().next())
        .map(|name| name.split(':').next().unwrap_or(name))
        .filter(|name| name.starts_with("lib"))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::{apt, cmd};

    #[test]
    fn takes_the_library_dependencies_only() {
        let d = "exim4-base (>= 4.96), debconf (>= 0.5) | debconf-2.0, libc6 (>= 2.34), \
                 libcrypt1 (>= 1:4.1.0), libdb5.3, libgnutls-dane0 (>= 3.7.0), libidn12 (>= 1.13), \
                 libfoo:any | libbar";
        assert_eq!(
            library_depends(d),
            [
                "libc6",
                "libcrypt1",
                "libdb5.3",
                "libgnutls-dane0",
                "libidn12",
                "libfoo"
            ]
        );
    }

    /// The guard on setup: nothing it would install here, the fixed packages, the private
    /// Exim's libraries and all their dependencies, is or conflicts with a mail transport
    /// agent, and installing them would remove nothing.
    #[test]
    fn setup_installs_no_mail_transport_agent() {
        let show = cmd::stdout(
            Command::new("apt-cache")
                .args(["show", "--no-all-versions", PACKAGE])
                .env("LC_ALL", "C"),
        )
        .expect("apt-cache show (run `cargo xtask setup` first: it runs apt-get update)");
        let depends = show
            .lines()
            .find_map(|l| l.strip_prefix("Depends:"))
            .expect("a Depends field");
        let mut names: Vec<String> = apt::PACKAGES.iter().map(|p| p.name.to_string()).collect();
        let libs = library_depends(depends);
        assert!(libs.iter().any(|l| l == "libc6"), "{libs:?}");
        names.extend(libs);
        crate::no_mta::check(&names).expect("setup's packages");
        // And the check does recognise one.
        assert_eq!(
            crate::no_mta::mta_packages(&[PACKAGE.to_string()]).expect("apt-cache show"),
            [PACKAGE]
        );
    }
}
