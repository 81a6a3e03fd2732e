//! Reading one refusal record of the kernel programs back into its parts, for the last refusal
//! `qmail-guard status` shows.
//!
//! The programs write `refused pid=P comm=C dst=A:PORT source=S` (IPv6: `dst=[A]:PORT`), with
//! all 16 bytes of the task name. The name is chosen by the process and may contain anything,
//! even ` dst=`; the kernel-formatted fields after it cannot, so they are taken from the end.
use guard_loader::state::LastRefusal;

use super::logs::sanitize;

/// The parts of a refusal record, or None for any other record.
pub fn parse(msg: &str, unix_time: u64) -> Option<LastRefusal> {
    let rest = msg.strip_prefix("refused pid=")?;
    let (pid, rest) = rest.split_once(" comm=")?;
    let pid = pid.parse().ok()?;
    let (rest, source) = rest.rsplit_once(" source=")?;
    let (comm, destination) = rest.rsplit_once(" dst=")?;
    let family = if destination.starts_with('[') {
        "ipv6"
    } else {
        "ipv4"
    };
    if destination.is_empty() || source.is_empty() {
        return None;
    }
    Some(LastRefusal {
        unix_time,
        pid,
        comm: sanitize(comm),
        family: family.to_string(),
        destination: destination.to_string(),
        source: source.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_families_and_drops_the_padding() {
        let r = parse(
            "refused pid=42 comm=qmail-remote\0\0\0\0 dst=192.0.2.1:25 source=interface",
            7,
        )
        .unwrap();
        assert_eq!(
            (
                r.pid,
                r.comm.as_str(),
                r.family.as_str(),
                r.destination.as_str(),
                r.source.as_str(),
                r.unix_time
            ),
            (42, "qmail-remote", "ipv4", "192.0.2.1:25", "interface", 7)
        );
        let r = parse(
            "refused pid=1 comm=x dst=[2001:db8::1]:2525 source=moreipme",
            0,
        )
        .unwrap();
        assert_eq!(
            (r.family.as_str(), r.destination.as_str()),
            ("ipv6", "[2001:db8::1]:2525")
        );
    }

    #[test]
    fn a_hostile_task_name_cannot_forge_the_destination() {
        let r = parse(
            "refused pid=9 comm=a dst=6.6.6.6:1 source=x\n dst=192.0.2.1:25 source=builtin",
            0,
        )
        .unwrap();
        assert_eq!(r.destination, "192.0.2.1:25");
        assert_eq!(r.source, "builtin");
        assert_eq!(r.comm, "a dst=6.6.6.6:1 source=x\\n");
    }

    #[test]
    fn other_records_are_not_refusals() {
        assert!(parse("something else", 0).is_none());
        assert!(parse("refused pid=x comm=a dst=1.2.3.4:25 source=i", 0).is_none());
        assert!(parse("refused pid=1 comm=a", 0).is_none());
    }
}
