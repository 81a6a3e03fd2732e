//! The few bpf(2) commands aya does not expose: which cgroup a pinned link is attached to, and
//! which programs the kernel really runs on a cgroup hook (to verify an attachment by reading
//! it back instead of trusting our own pins).
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya_obj::generated::{
    bpf_attach_type::{BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET6_CONNECT},
    bpf_attr, bpf_cmd, bpf_link_info,
    bpf_link_type::BPF_LINK_TYPE_CGROUP,
    bpf_map_type::{BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_ARRAY_OF_MAPS},
};

use super::Hook;

impl Hook {
    /// The kernel's `enum bpf_attach_type` value of this hook.
    pub fn attach_type(self) -> u32 {
        match self {
            Hook::Connect4 => BPF_CGROUP_INET4_CONNECT as u32,
            Hook::Connect6 => BPF_CGROUP_INET6_CONNECT as u32,
        }
    }
}

/// An all-zero `union bpf_attr`: the kernel requires every byte it does not use to be zero.
/// An all-zero attribute union. Fields are written into it in place, never by assigning a
/// whole member struct: a struct value's padding bytes are undefined, and the kernel rejects
/// a command (EINVAL) when any byte after the command's last field is not zero, which
/// includes a member's trailing padding (BPF_OBJ_GET's, 4 bytes after `path_fd`, failed
/// whenever the stack held garbage there).
fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a C union of integer fields; all-zero is a valid value of each.
    unsafe { std::mem::zeroed() }
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a whole `union bpf_attr` of the size given; pointers inside it point to
    // buffers that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            std::mem::size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Opens a pinned BPF object (BPF_OBJ_GET).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = zeroed_attr();
    // In place: the member's trailing padding must stay zero (see `zeroed_attr`).
    attr.__bindgen_anon_4.pathname = c.as_ptr() as u64;
    let fd = bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What the kernel says about a cgroup link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLinkInfo {
    pub link_id: u32,
    pub prog_id: u32,
    /// 0 once the cgroup has been released (the link is then defunct: attached to nothing).
    pub cgroup_id: u64,
    pub attach_type: u32,
}

/// BPF_OBJ_GET_INFO_BY_FD on the link pinned at `path`; None if it is not a cgroup link.
pub fn cgroup_link_info(path: &Path) -> io::Result<Option<CgroupLinkInfo>> {
    let fd = obj_get(path)?;
    // SAFETY: bpf_link_info is a C struct/union of integers; all-zero is valid.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = std::mem::size_of::<bpf_link_info>() as u32;
    attr.info.info = std::ptr::from_mut(&mut info) as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    if info.type_ != BPF_LINK_TYPE_CGROUP as u32 {
        return Ok(None);
    }
    // SAFETY: the kernel filled the `cgroup` member: the link type says so.
    let cgroup = unsafe { info.__bindgen_anon_1.cgroup };
    Ok(Some(CgroupLinkInfo {
        link_id: info.id,
        prog_id: info.prog_id,
        cgroup_id: cgroup.cgroup_id,
        attach_type: cgroup.attach_type,
    }))
}

/// The ids of the programs attached directly to `cgroup` on `hook` (BPF_PROG_QUERY), as the
/// kernel runs them: one entry per attachment, so a duplicate attachment shows twice.
pub fn attached_programs(cgroup: &Path, hook: Hook) -> io::Result<Vec<u32>> {
    let dir = std::fs::File::open(cgroup)?;
    let mut ids = vec![0u32; 16];
    loop {
        let mut attr = zeroed_attr();
        attr.query.__bindgen_anon_1.target_fd = dir.as_raw_fd() as u32;
        attr.query.attach_type = hook.attach_type();
        attr.query.prog_ids = ids.as_mut_ptr() as u64;
        attr.query.__bindgen_anon_2.prog_cnt = ids.len() as u32;
        let result = bpf(bpf_cmd::BPF_PROG_QUERY, &mut attr);
        // SAFETY: `query` is the member we filled and the kernel wrote back.
        let count = unsafe { attr.query.__bindgen_anon_2.prog_cnt } as usize;
        match result {
            Ok(_) => {
                ids.truncate(count);
                return Ok(ids);
            }
            // The buffer was too small; prog_cnt now holds the real count.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && count > ids.len() => {
                ids = vec![0u32; count];
            }
            Err(e) => return Err(e),
        }
    }
}

fn map_create(map_type: u32, inner_map_fd: Option<&OwnedFd>, name: &[u8]) -> io::Result<OwnedFd> {
    let mut map_name = [0 as std::ffi::c_char; 16];
    for (d, s) in map_name.iter_mut().zip(name.iter().take(15)) {
        *d = *s as std::ffi::c_char;
    }
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_1.map_type = map_type;
    attr.__bindgen_anon_1.key_size = 4;
    attr.__bindgen_anon_1.value_size = 4;
    attr.__bindgen_anon_1.max_entries = 1;
    attr.__bindgen_anon_1.inner_map_fd = inner_map_fd.map_or(0, |fd| fd.as_raw_fd() as u32);
    attr.__bindgen_anon_1.map_name = map_name;
    let fd = bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Lifts RLIMIT_MEMLOCK for this process. Before Linux 5.11 every BPF map is charged to the
/// user's locked memory (all of root's maps together) and creating one beyond the limit fails
/// with EPERM; Debian 11's systemd leaves services at the kernel's 64 KiB. Later kernels
/// charge the memory cgroup instead and ignore the limit. A failure (no CAP_SYS_RESOURCE) is
/// left to show in the map creation that needed it.
pub fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit for the duration of the call.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// Waits until every BPF program run that started before the call has finished.
///
/// cgroup programs run inside an RCU read-side section, and updating an array of maps with a
/// map makes the kernel wait for an RCU grace period before the syscall returns (so that user
/// space knows no program still uses the old inner map; the kernel's own selftests rely on
/// it). A private pair of maps is enough: the wait is global. Used before rewriting a trie that
/// programs may still be reading.
pub struct RcuBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl RcuBarrier {
    pub fn new() -> io::Result<Self> {
        raise_memlock();
        let inner = map_create(BPF_MAP_TYPE_ARRAY as u32, None, b"qg_barrier_in")?;
        let outer = map_create(
            BPF_MAP_TYPE_ARRAY_OF_MAPS as u32,
            Some(&inner),
            b"qg_barrier",
        )?;
        Ok(RcuBarrier { outer, inner })
    }

    pub fn wait(&self) -> io::Result<()> {
        let key = 0u32;
        let value = self.inner.as_raw_fd() as u32;
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_2.map_fd = self.outer.as_raw_fd() as u32;
        attr.__bindgen_anon_2.key = std::ptr::from_ref(&key) as u64;
        attr.__bindgen_anon_2.__bindgen_anon_1.value = std::ptr::from_ref(&value) as u64;
        bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }
}

/// Makes the link pinned at `link` run `new_prog` instead of its current program, in one step
/// (BPF_LINK_UPDATE): the cgroup is never without a program.
pub fn link_update(link: &Path, new_prog: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    let fd = obj_get(link)?;
    let mut attr = zeroed_attr();
    attr.link_update.link_fd = fd.as_raw_fd() as u32;
    attr.link_update.__bindgen_anon_1.new_prog_fd = new_prog.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// Swaps two names on the same filesystem atomically (renameat2 RENAME_EXCHANGE): both paths
/// exist at every instant.
pub fn rename_exchange(a: &Path, b: &Path) -> io::Result<()> {
    let ca = CString::new(a.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let cb = CString::new(b.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_types_are_the_kernels() {
        assert_eq!(Hook::Connect4.attach_type(), 10);
        assert_eq!(Hook::Connect6.attach_type(), 11);
    }

    #[test]
    fn missing_pin_is_an_error() {
        assert!(obj_get(Path::new("/nonexistent/qmail-guard-pin")).is_err());
    }
}
