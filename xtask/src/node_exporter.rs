//! The node_exporter the metrics test scrapes (guard_tests::node_exporter says where): Debian's
//! prometheus-node-exporter unpacked, never installed (the package would start a service).

use anyhow::{Result, anyhow};
use guard_tests::node_exporter::{self, BINARY, PACKAGE};

use crate::unpacked::{self, Unpacked};

/// Makes sure the private node_exporter is unpacked.
pub fn ensure() -> Result<()> {
    unpacked::ensure(&Unpacked {
        what: "private node_exporter",
        package: PACKAGE,
        binary: BINARY,
        base: node_exporter::base_dir().map_err(|e| anyhow!(e))?,
        current: node_exporter::current().ok(),
    })
}
