//! qmail-guard-docs DIR: writes the man pages and shell completions of qmail-guard and
//! ipmeprint into DIR (used by `cargo xtask deb`; not installed).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: qmail-guard-docs DIR");
        return ExitCode::from(2);
    };
    match qmail_guard::docs::write_all(&PathBuf::from(dir)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qmail-guard-docs: {e}");
            ExitCode::FAILURE
        }
    }
}
