//! How the loaded guard refuses a connect. ELOOP (set with `bpf_set_retval`) is the guard's own
//! errno, which qmail-remote bounces on. Kernels before 5.18 do not let cgroup sock_addr
//! programs call `bpf_set_retval`; there the EPERM variant runs, and EPERM is also what a
//! firewall returns, so qmail-remote can only bounce when it knows the address itself.
use aya::programs::ProgramInfo;
use guard_common::{PROG_CONNECT4, PROG_CONNECT4_EPERM, PROG_CONNECT6, PROG_CONNECT6_EPERM};

use super::{GuardError, Hook, PinDir};

/// `bpf_set_retval`'s helper number (BPF_FUNC_set_retval) in verifier messages.
const SET_RETVAL_HELPER: &str = "#187";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `connect(2)` fails with ELOOP: only the guard produces it.
    Eloop,
    /// `connect(2)` fails with EPERM, the kernel's default for a denying cgroup program.
    Eperm,
}

impl Refusal {
    /// The order the loader tries them in.
    pub const PREFERENCE: [Refusal; 2] = [Refusal::Eloop, Refusal::Eperm];

    pub fn errno(self) -> i32 {
        match self {
            Refusal::Eloop => libc::ELOOP,
            Refusal::Eperm => libc::EPERM,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Refusal::Eloop => "ELOOP",
            Refusal::Eperm => "EPERM",
        }
    }

    /// The program of this variant for `hook` in the eBPF object.
    pub fn program(self, hook: Hook) -> &'static str {
        match (self, hook) {
            (Refusal::Eloop, Hook::Connect4) => PROG_CONNECT4,
            (Refusal::Eloop, Hook::Connect6) => PROG_CONNECT6,
            (Refusal::Eperm, Hook::Connect4) => PROG_CONNECT4_EPERM,
            (Refusal::Eperm, Hook::Connect6) => PROG_CONNECT6_EPERM,
        }
    }

    /// One sentence for `status` and `attach`: what the variant means for mail.
    pub fn meaning(self) -> &'static str {
        match self {
            Refusal::Eloop => "qmail-remote bounces such a delivery (#5.4.6)",
            Refusal::Eperm => {
                "this kernel's cgroup programs cannot call bpf_set_retval (Linux < 5.18), so a \
                 refused connect fails with EPERM, a firewall's errno too: qmail-remote defers \
                 the delivery (#4.4.1, retried) unless the address is in its own ipme set \
                 (control/moreipme, interfaces), where it bounces (#5.4.6). No loop either way"
            }
        }
    }

    /// The variant of the pinned programs, from the name the kernel reports for them.
    pub fn of_pinned(pins: &PinDir) -> Result<Refusal, GuardError> {
        let path = pins.prog(Hook::Connect4);
        let info = ProgramInfo::from_pin(&path)
            .map_err(|e| GuardError::Link(path.clone(), super::attach::chain(&e)))?;
        let name = info.name_as_str().unwrap_or_default();
        Refusal::PREFERENCE
            .into_iter()
            .find(|r| r.program(Hook::Connect4) == name)
            .ok_or_else(|| {
                GuardError::Link(path, format!("pinned program {name:?} is not the guard's"))
            })
    }
}

/// Whether a program load failed only because the kernel lacks `bpf_set_retval` for this
/// program type (5.10 says "invalid func unknown#187", later kernels "unknown func
/// bpf_set_retval#187").
pub(crate) fn set_retval_missing(load_error: &str) -> bool {
    load_error
        .lines()
        .any(|l| l.contains("func") && l.contains(SET_RETVAL_HELPER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_missing_helper_is_recognised_in_both_kernel_wordings() {
        let v510 = "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). \
                    Verifier output: 0: R1=ctx(id=0,off=0,imm=0) R10=fp0\n\
                    45: (85) call unknown#187\ninvalid func unknown#187\n";
        assert!(set_retval_missing(v510));
        assert!(set_retval_missing(
            "88: (85) call bpf_set_retval#187\nunknown func bpf_set_retval#187\n"
        ));
        assert!(!set_retval_missing(
            "the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1). Verifier output: "
        ));
    }

    #[test]
    fn variants_name_their_programs_and_errnos() {
        assert_eq!(Refusal::Eloop.program(Hook::Connect6), "connect6");
        assert_eq!(Refusal::Eperm.program(Hook::Connect4), "connect4_eperm");
        assert_eq!(Refusal::Eperm.errno(), libc::EPERM);
        assert_eq!(Refusal::Eloop.name(), "ELOOP");
    }
}
