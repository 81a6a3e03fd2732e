//! qmail-guard: the command line (`args`) and the daemon (`daemon`) that keep the kernel guard
//! attached to qmail's cgroup and its maps equal to the ipme set. The binaries are `qmail-guard`
//! and `ipmeprint`; `learn` takes the addresses qmail-remote found to be this host into the set.
pub mod args;
pub mod daemon;
pub mod docs;
pub mod ipmeprint_args;
pub mod learn;
