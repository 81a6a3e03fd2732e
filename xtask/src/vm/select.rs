//! Which integration tests run inside a VM. Under software emulation a netns or a fork costs
//! 20–40× what it costs on the host, so the VM runs the tests that show the guard works on
//! that kernel (refusal matrix, the CLI's attach/sync/detach, NAT, qmail-remote's verdict on
//! a refusal) and leaves parsing, DNS and SMTP details to the host run.

/// (test target in tests/tests, exact test names; empty = every test of the target).
pub const VM_TESTS: &[(&str, &[&str])] = &[
    ("guard", &[]),
    (
        "cli",
        &[
            "attach_pins_the_documented_layout",
            "attach_twice_keeps_one_link_per_hook_and_reuses_the_maps",
            "detach_of_one_cgroup_keeps_the_other_and_the_last_detach_removes_the_pins",
        ],
    ),
    (
        "control",
        &[
            "sync_applies_control_and_interface_changes_in_place",
            "sync_with_a_bad_line_keeps_the_maps_in_force",
        ],
    ),
    ("nat", &[]),
    (
        "qmail_remote_guard",
        &[
            "relay_to_a_moreipme_address_is_refused_by_the_kernel_as_ambigmx",
            "mx_at_a_nat_address_known_only_to_the_guard_is_refused_as_ambigmx",
        ],
    ),
];

/// libtest arguments for one target: its exact names (if any), and the thread count.
pub fn args(names: &[&str], threads: u32) -> Vec<String> {
    let mut v = vec!["--test-threads".to_string(), threads.to_string()];
    if !names.is_empty() {
        v.push("--exact".into());
        v.extend(names.iter().map(|n| n.to_string()));
    }
    v
}
