//! What the maps can hold, checked before anything is written: an over-full trie would fail
//! with ENOSPC halfway through an update, and a bad port list would change PORTS halfway.
use std::collections::BTreeSet;

use guard_common::{MAX_IPME_ENTRIES, MAX_PORTS};
use ipme::{IpNet, IpmeSet};

use super::GuardError;

/// Refuses a set with more entries per family than its trie holds.
pub fn check_capacity(set: &IpmeSet) -> Result<(), GuardError> {
    let v4 = set
        .entries()
        .iter()
        .filter(|e| matches!(e.net, IpNet::V4(_)))
        .count();
    let v6 = set.len() - v4;
    for (family, count) in [("IPv4", v4), ("IPv6", v6)] {
        if count > MAX_IPME_ENTRIES {
            return Err(GuardError::Capacity {
                family,
                count,
                limit: MAX_IPME_ENTRIES,
            });
        }
    }
    Ok(())
}

/// Guarded ports: at least one, each 1-65535, at most the map's capacity.
pub fn check_ports(ports: &BTreeSet<u16>) -> Result<(), GuardError> {
    if ports.is_empty() {
        return Err(GuardError::Ports("no port given".to_string()));
    }
    if ports.contains(&0) {
        return Err(GuardError::Ports(
            "port 0 is not a port a connect can reach; give ports 1-65535".to_string(),
        ));
    }
    if ports.len() > MAX_PORTS {
        return Err(GuardError::Ports(format!(
            "{} ports given, at most {MAX_PORTS} can be guarded",
            ports.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert!(check_ports(&[25].into()).is_ok());
        assert!(check_ports(&[25, 587, 65535].into()).is_ok());
        assert!(check_ports(&BTreeSet::new()).is_err());
        let e = check_ports(&[0, 25].into()).unwrap_err().to_string();
        assert!(e.contains("port 0"), "{e}");
        let many: BTreeSet<u16> = (1..=MAX_PORTS as u16 + 1).collect();
        let e = check_ports(&many).unwrap_err().to_string();
        assert!(e.contains("65 ports given, at most 64"), "{e}");
        let max: BTreeSet<u16> = (1..=MAX_PORTS as u16).collect();
        assert!(check_ports(&max).is_ok());
    }

    #[test]
    fn capacity() {
        assert!(check_capacity(&IpmeSet::compute(&Default::default())).is_ok());
        let e = GuardError::Capacity {
            family: "IPv4",
            count: 2_097_153,
            limit: MAX_IPME_ENTRIES,
        };
        assert!(
            e.to_string().contains("2097153 IPv4 entries") && e.to_string().contains("2097152"),
            "{e}"
        );
    }
}
