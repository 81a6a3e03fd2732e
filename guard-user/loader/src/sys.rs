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

use super::Hook;

// Commands and attach types from include/uapi/linux/bpf.h (stable kernel ABI).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
/// `BPF_LINK_TYPE_CGROUP`: the only link type whose info carries a cgroup id.
const BPF_LINK_TYPE_CGROUP: u32 = 3;

impl Hook {
    /// The kernel's `enum bpf_attach_type` value of this hook.
    pub fn attach_type(self) -> u32 {
        match self {
            Hook::Connect4 => BPF_CGROUP_INET4_CONNECT,
            Hook::Connect6 => BPF_CGROUP_INET6_CONNECT,
        }
    }
}

/// `union bpf_attr` for BPF_OBJ_GET.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `union bpf_attr` for BPF_PROG_QUERY (fields up to `revision`, kernel 6.6 layout; older
/// kernels ignore the zeroed tail).
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// `struct bpf_link_info` head plus its `cgroup` union member; the zeroed tail leaves room for
/// the kernel's larger union members (it only checks that bytes it does not know are zero).
#[repr(C)]
struct LinkInfoRaw {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    cgroup_id: u64,
    attach_type: u32,
    _tail: [u8; 100],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a #[repr(C)] bpf_attr prefix of the given size; pointers inside it
    // point to buffers that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>() as libc::c_uint,
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
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
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
    let mut info = LinkInfoRaw {
        link_type: 0,
        id: 0,
        prog_id: 0,
        _pad: 0,
        cgroup_id: 0,
        attach_type: 0,
        _tail: [0; 100],
    };
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<LinkInfoRaw>() as u32,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    if info.link_type != BPF_LINK_TYPE_CGROUP {
        return Ok(None);
    }
    Ok(Some(CgroupLinkInfo {
        link_id: info.id,
        prog_id: info.prog_id,
        cgroup_id: info.cgroup_id,
        attach_type: info.attach_type,
    }))
}

/// The ids of the programs attached directly to `cgroup` on `hook` (BPF_PROG_QUERY), as the
/// kernel runs them: one entry per attachment, so a duplicate attachment shows twice.
pub fn attached_programs(cgroup: &Path, hook: Hook) -> io::Result<Vec<u32>> {
    let dir = std::fs::File::open(cgroup)?;
    let mut ids = vec![0u32; 16];
    loop {
        let mut attr = QueryAttr {
            target_fd: dir.as_raw_fd() as u32,
            attach_type: hook.attach_type(),
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..Default::default()
        };
        match bpf(BPF_PROG_QUERY, &mut attr) {
            Ok(_) => {
                ids.truncate(attr.prog_cnt as usize);
                return Ok(ids);
            }
            // The buffer was too small; prog_cnt now holds the real count.
            Err(e)
                if e.raw_os_error() == Some(libc::ENOSPC) && attr.prog_cnt as usize > ids.len() =>
            {
                ids = vec![0u32; attr.prog_cnt as usize];
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<ObjGetAttr>(), 24);
        assert_eq!(std::mem::size_of::<InfoAttr>(), 16);
        assert_eq!(std::mem::size_of::<QueryAttr>(), 64);
        assert_eq!(std::mem::offset_of!(QueryAttr, prog_ids), 16);
        assert_eq!(std::mem::offset_of!(QueryAttr, prog_cnt), 24);
        assert_eq!(std::mem::offset_of!(LinkInfoRaw, cgroup_id), 16);
        assert_eq!(std::mem::offset_of!(LinkInfoRaw, attach_type), 24);
    }

    #[test]
    fn missing_pin_is_an_error() {
        assert!(obj_get(Path::new("/nonexistent/qmail-guard-pin")).is_err());
    }
}
