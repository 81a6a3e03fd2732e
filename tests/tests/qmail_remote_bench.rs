//! qmail-remote per-delivery cost (ignored by default: a benchmark, not a test).
//! `cargo build --release -p guard-user --bin qmail-remote &&
//!  QMAIL_GUARD_BIN_DIR=target/release cargo test -p guard-tests --test qmail_remote_bench -- --ignored --nocapture`

use guard_tests::bins;
use guard_tests::remote_bench::{measure, row, rss_floor_kib};

#[test]
#[ignore = "benchmark; run explicitly"]
fn qmail_remote_per_delivery() {
    let bin = bins::bin_path("qmail-remote");
    println!("binary: {}", bin.display());
    println!(
        "RSS floor of the method (/bin/true under /usr/bin/time): {:?} KiB",
        rss_floor_kib()
    );
    println!("| message | runs | CPU (median) | wall (median) | peak RSS | syscalls |");
    println!("|---|---|---|---|---|---|");
    for (size, runs) in [(4 << 10, 200), (1 << 20, 50)] {
        println!("{}", row(&measure(&bin, size, runs)));
    }
}
