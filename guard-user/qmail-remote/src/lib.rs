//! qmail-remote: a byte-compatible drop-in for qmail's remote delivery program
//! (contract: docs/qmail-remote.md, and docs/qmail-remote-tls.md for EHLO, STARTTLS/SMTPS, AUTH
//! and SIZE), with IPv6, a real resolver, the shared ipme set for the loop rule and the
//! qmail-guard kernel refusal (ELOOP → perm_ambigmx).
//!
//! Modules, one job each: `args` (argv), `control` (control files), `routes` (smtproutes,
//! authsenders), `quote` (address mangling), `dns` (candidate list, MX order), `resolver`
//! (hickory backend), `prefme` (loop rule), `loopcheck` (our own greeting), `tcpto` (timeout table), `connect` (sockets with
//! timeouts), `ehlo` (EHLO extensions), `tls` (TLS policy, rustls stream, verification), `cert`
//! (certificate names), `sasl` (AUTH messages), `smtp` (dialogue), `blast` (body encoding),
//! `report` (output records), `run` (the sequence), `startup` (pages only start-up needed).
//!
//! Process rules (docs/qmail-remote.md §1.3–1.5): always exit 0; never write to stderr (it is the report
//! pipe); a panic becomes a Z report.

pub mod args;
pub mod blast;
pub mod cert;
pub mod connect;
pub mod control;
pub mod dns;
pub mod ehlo;
pub mod loopcheck;
pub mod prefme;
pub mod quote;
pub mod report;
pub mod resolver;
pub mod routes;
pub mod run;
pub mod sasl;
pub mod smtp;
pub mod startup;
pub mod tcpto;
pub mod tls;

use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};

use report::{Output, Report};

/// Points fd 2 at /dev/null: fd 2 is the report pipe, and no library may write into it.
fn silence_stderr() {
    // SAFETY: plain open/dup2/close on descriptors this function owns.
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            if fd != 2 {
                libc::dup2(fd, 2);
                libc::close(fd);
            } else {
                // fd 2 was closed and /dev/null took its place: keep it open across exec
                libc::fcntl(2, libc::F_SETFD, 0);
            }
        }
    }
}

/// Writes everything to fd 1; a failure is silently ignored like stock (`_exit(0)`).
fn write_stdout(mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: b is valid for b.len() bytes of reads.
        let r = unsafe { libc::write(1, b.as_ptr().cast(), b.len()) };
        if r > 0 {
            b = &b[r as usize..];
        } else if r == -1
            && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {
            continue;
        } else {
            return;
        }
    }
}

/// Runs `f` and adds its message report to `out`; a panic inside `f` becomes the Z report
/// [`Report::Internal`] after whatever recipient reports were already made, so qmail-rspawn
/// retries instead of bouncing (an unwinding panic would exit 101: "DUnable to run").
pub fn guarded(out: &mut Output, f: impl FnOnce(&mut Output) -> Report) {
    let result = catch_unwind(AssertUnwindSafe(|| f(&mut *out)));
    out.finish(&result.unwrap_or(Report::Internal));
}

/// The whole program: never returns, always exits 0.
pub fn main() -> ! {
    startup::release_read_only_segment();
    // stock sig_pipeignore(): a vanished reader of fd 1 must not kill us before exit 0
    // SAFETY: installing SIG_IGN has no handler code to be unsafe about.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    silence_stderr();
    // the default hook prints to stderr; the Z report below says enough
    std::panic::set_hook(Box::new(|_| {}));
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let home = ipme::qmail_home(None);
    let mut out = Output::new();
    guarded(&mut out, |out| {
        // fd 0 is the queued message; read it unbuffered (large reads), never close it
        // SAFETY: fd 0 belongs to the process for its whole life; ManuallyDrop keeps it open.
        let mut msg = ManuallyDrop::new(unsafe { File::from_raw_fd(0) });
        run::run(argv, &home, &mut *msg, out)
    });
    write_stdout(out.bytes());
    // _exit, not exit: nothing is buffered (reports go out with write(2) above, no stdio, no
    // atexit handlers), and glibc's exit-time stdio cleanup would fault in code pages of its
    // own (about 128 KiB of peak RSS) only to find nothing to flush.
    // SAFETY: ends the process; no Rust state needs to outlive it.
    unsafe { libc::_exit(0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use report::RcptReport;

    #[test]
    fn panic_becomes_a_z_report() {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let mut out = Output::new();
        guarded(&mut out, |o| {
            o.recipient(&RcptReport::Accepted);
            panic!("bug");
        });
        std::panic::set_hook(prev);
        assert_eq!(
            out.bytes(),
            format!("r\0{}\0", report::INTERNAL_TEXT).as_bytes()
        );
        let mut out = Output::new();
        guarded(&mut out, |_| Report::TempNoconn);
        assert!(out.bytes().starts_with(b"ZSorry, I wasn't able"));
    }
}
