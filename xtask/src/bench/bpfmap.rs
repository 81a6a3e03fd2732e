//! Writing a pinned IPv4 ipme trie directly with bpf(2), to put 10k or 1M entries in place in
//! a second or two (qmail-guard's path — parse moreipme, diff, update — is not what the
//! connect benchmark measures). Raw system calls rather than aya: xtask must build before
//! `cargo xtask setup` has installed anything, and needs only two commands.

use std::ffi::CString;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use guard_common::IpmeValue;

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_GET: libc::c_long = 7;
/// `union bpf_attr` is smaller than this; the kernel requires the unused tail to be zero.
const ATTR_WORDS: usize = 16;

fn bpf(cmd: libc::c_long, attr: &mut [u64; ATTR_WORDS]) -> std::io::Result<i64> {
    // SAFETY: attr is a zero-padded bpf_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// An open pinned `IPME_V4` map.
pub struct V4Trie {
    fd: OwnedFd,
}

/// The LPM trie key layout of `IPME_V4`: prefix length, then the address in network order.
#[repr(C)]
struct Key4 {
    prefix_len: u32,
    data: [u8; 4],
}

impl V4Trie {
    pub fn open(pinned: &Path) -> Result<V4Trie> {
        let path =
            CString::new(pinned.as_os_str().as_bytes()).context("map path contains a NUL byte")?;
        let mut attr = [0u64; ATTR_WORDS];
        attr[0] = path.as_ptr() as u64;
        let fd = bpf(BPF_OBJ_GET, &mut attr)
            .with_context(|| format!("cannot open pinned map {}", pinned.display()))?;
        Ok(V4Trie {
            // SAFETY: a fresh map descriptor we own.
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// Inserts or replaces `addr/len` with `tag`.
    pub fn insert(&self, addr: [u8; 4], len: u32, tag: u32) -> Result<()> {
        if len > 32 {
            bail!("prefix length {len} > 32");
        }
        let key = Key4 {
            prefix_len: len,
            data: addr,
        };
        let value = IpmeValue { tag };
        let mut attr = [0u64; ATTR_WORDS];
        attr[0] = self.fd.as_raw_fd() as u64;
        attr[1] = std::ptr::addr_of!(key) as u64;
        attr[2] = std::ptr::addr_of!(value) as u64;
        // flags (attr[3]) = BPF_ANY
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).with_context(|| {
            format!(
                "cannot insert {}.{}.{}.{}/{len}",
                addr[0], addr[1], addr[2], addr[3]
            )
        })?;
        Ok(())
    }
}
