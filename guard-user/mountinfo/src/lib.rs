//! Parsing of /proc/self/mountinfo: where cgroup2, cgroup v1 hierarchies and bpffs are mounted.
//! Never hard-code /sys/fs/cgroup: on hybrid systems cgroup2 lives at /sys/fs/cgroup/unified.

use std::io;
use std::path::PathBuf;

/// One mountinfo line, reduced to what the harness needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub super_options: String,
}

/// Parses mountinfo text (see proc(5)); malformed lines are ignored.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS"
    let (before, after) = line.split_once(" - ")?;
    let mount_point = before.split(' ').nth(4)?;
    let mut after = after.split(' ');
    let fstype = after.next()?;
    let _source = after.next()?;
    let super_options = after.next().unwrap_or("");
    Some(Mount {
        mount_point: PathBuf::from(unescape(mount_point)),
        fstype: fstype.to_string(),
        super_options: super_options.to_string(),
    })
}

/// Undoes the kernel's octal escaping of space, tab, newline and backslash (`\040` etc.).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts of the calling process.
pub fn mounts() -> io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The first cgroup2 mount point, if any.
pub fn cgroup2_mount() -> io::Result<Option<PathBuf>> {
    Ok(mounts()?
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.mount_point))
}

/// Mount points of cgroup v1 hierarchies (fstype `cgroup`), e.g. /sys/fs/cgroup/cpu.
pub fn cgroup1_mounts() -> io::Result<Vec<PathBuf>> {
    Ok(mounts()?
        .into_iter()
        .filter(|m| m.fstype == "cgroup")
        .map(|m| m.mount_point)
        .collect())
}

/// Mount points of bpffs instances.
pub fn bpffs_mounts() -> io::Result<Vec<PathBuf>> {
    Ok(mounts()?
        .into_iter()
        .filter(|m| m.fstype == "bpf")
        .map(|m| m.mount_point)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const SAMPLE: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:7 - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /sys/fs/bpf rw,nosuid master:3 - bpf bpf rw,mode=700
60 23 0:41 / /mnt/with\\040space rw - ext4 /dev/sda1 rw
garbage line
";

    #[test]
    fn finds_cgroup2_among_hybrid_mounts() {
        let m = parse(SAMPLE);
        let cg2: Vec<_> = m.iter().filter(|m| m.fstype == "cgroup2").collect();
        assert_eq!(cg2.len(), 1);
        assert_eq!(cg2[0].mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn optional_fields_do_not_shift_fstype() {
        let m = parse(SAMPLE);
        let cpu = m
            .iter()
            .find(|m| m.mount_point == Path::new("/sys/fs/cgroup/cpu"))
            .unwrap();
        assert_eq!(cpu.fstype, "cgroup");
        assert_eq!(cpu.super_options, "rw,cpu");
        let bpf = m.iter().find(|m| m.fstype == "bpf").unwrap();
        assert_eq!(bpf.mount_point, PathBuf::from("/sys/fs/bpf"));
    }

    #[test]
    fn unescapes_octal_and_skips_garbage() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 5);
        assert!(
            m.iter()
                .any(|m| m.mount_point == Path::new("/mnt/with space"))
        );
    }

    #[test]
    fn real_mountinfo_parses() {
        // Every process has a root mount; an empty result would mean the parser is broken.
        let m = mounts().unwrap();
        assert!(m.iter().any(|m| m.mount_point == Path::new("/")));
    }

    #[test]
    fn escape_at_the_very_end_is_undone() {
        assert_eq!(unescape("/mnt/a\\040"), "/mnt/a ");
        assert_eq!(unescape("/mnt/a\\04"), "/mnt/a\\04");
    }
}
