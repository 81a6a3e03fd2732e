//! Real-kernel integration test harness for qmail-guard.
//!
//! Every fixture creates uniquely named kernel objects (cgroup, network namespace, bpffs pin
//! directory) so tests run in parallel, and removes them on drop, also when the test panics.
//! The harness needs root and a cgroup2 mount; without them a fixture panics with a clear
//! message instead of skipping, so a misconfigured machine never passes silently.

pub mod bins;
pub mod bpftool;
pub mod cgroup;
pub mod cmd;
pub mod connect_loop;
pub mod daemon;
pub mod dnsmasq;
pub mod errno;
pub mod exim_prefix;
pub mod guard;
pub mod listener;
pub mod loop_scene;
pub mod machine;
pub mod machine_image;
pub use guard_mountinfo as mountinfo;
pub mod mta;
pub mod mx_scene;
pub mod netns;
pub mod node_exporter;
pub mod nsenter;
pub mod pki;
pub mod preflight;
pub mod probe;
pub mod qmail_remote;
pub mod rspawn;
pub mod scene;
pub mod smtp_sink;
pub mod topology;
pub mod unique;

pub use cgroup::Cgroup;
pub use guard::Guard;
pub use listener::Listener;
pub use netns::Netns;
pub use probe::{ProbeResult, probe_line, spawn_probe};
pub use topology::MailHost;
