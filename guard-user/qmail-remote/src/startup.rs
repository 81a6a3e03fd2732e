//! Gives back what only process start-up needed.
//!
//! In the static release build the executable's first, read-only segment starts with the
//! relocation table (about 200 KiB: start-up reads it once to relocate the static PIE) and
//! holds the tables glibc reads while it initialises. The kernel maps such file pages in 64-128
//! KiB blocks, so by the time `main` runs most of the segment counts in the resident set
//! although the delivery needs only a few of its strings. Dropping the mapping's pages here
//! (MADV_DONTNEED: the segment is never written, so nothing is lost; a page read later comes
//! back from the page cache) lowers peak RSS by several hundred KiB at the cost of a few
//! page faults.

use std::ffi::{c_int, c_void};

/// Drops the resident pages of the executable's first read-only, non-executable segment.
pub fn release_read_only_segment() {
    // SAFETY: dl_iterate_phdr calls `first_object` with valid program headers of each loaded
    // object; the callback only reads them and madvises whole pages of a read-only mapping.
    unsafe {
        libc::dl_iterate_phdr(Some(first_object), std::ptr::null_mut());
    }
}

/// Callback for the first object, the executable: returns 1 to stop the iteration there.
unsafe extern "C" fn first_object(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    _data: *mut c_void,
) -> c_int {
    // SAFETY: glibc passes a valid dl_phdr_info for the duration of the call.
    let info = unsafe { &*info };
    if info.dlpi_phdr.is_null() {
        return 1;
    }
    // SAFETY: dlpi_phdr points to dlpi_phnum program headers.
    let headers =
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let Some(ro) = headers
        .iter()
        .find(|h| h.p_type == libc::PT_LOAD && h.p_flags & (libc::PF_W | libc::PF_X) == 0)
    else {
        return 1;
    };
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return 1,
    };
    let start = (info.dlpi_addr as usize + ro.p_vaddr as usize).next_multiple_of(page);
    let end = (info.dlpi_addr as usize + (ro.p_vaddr + ro.p_memsz) as usize) / page * page;
    if end > start {
        // SAFETY: whole pages inside the executable's read-only mapping; its contents are the
        // file's, so dropping them loses nothing. The result does not matter.
        unsafe {
            libc::madvise(start as *mut c_void, end - start, libc::MADV_DONTNEED);
        }
    }
    1
}
