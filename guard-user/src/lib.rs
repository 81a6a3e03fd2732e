//! qmail-guard user space: the ipme set, the BPF loader/daemon and the qmail-remote drop-in.
