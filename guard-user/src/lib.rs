//! qmail-guard user space: the ipme set, the BPF loader/daemon and the qmail-remote drop-in.
pub mod cgroup;
pub mod daemon;
pub mod guard;
pub mod ipme;
pub mod remote;
