//! Printing for a human: headings, the commands as one would type them, their output indented.

/// A step heading.
pub fn heading(s: &str) {
    println!("\n=== {s} ===");
}

/// A sentence of explanation.
pub fn line(s: &str) {
    println!("{s}");
}

/// A command as typed at a root shell.
pub fn cmd(s: &str) {
    println!("  # {s}");
}

/// Output of a command (or any multi-line text), indented under it.
pub fn out(s: &str) {
    for l in s.trim_end().lines() {
        println!("    {l}");
    }
}

/// Milliseconds with two decimals.
pub fn ms(d: std::time::Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
