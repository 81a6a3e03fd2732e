//! Command line of ipmeprint (here, not in its binary, so the man page and the shell
//! completions are generated from this very definition).
use std::path::PathBuf;

use clap::Parser;

/// Print the addresses qmail treats as this host ("ipme"): interface addresses, local routes,
/// built-ins (0.0.0.0/8, 127.0.0.0/8, ::, ::1), control/moreipme, the addresses qmail-guard
/// learned (loopcheck/learned), and the control/notipme exceptions. The longest matching prefix
/// decides; on the same prefix notipme wins.
#[derive(Debug, Parser)]
#[command(
    name = "ipmeprint",
    version,
    about = "Print the addresses qmail treats as this host (\"ipme\"), with their sources"
)]
pub struct Args {
    /// qmail home directory [default: $QMAILHOME, else the build-time default, /var/qmail]
    #[arg(long, value_name = "DIR")]
    pub qmail_home: Option<PathBuf>,
    /// Append each entry's source (interface, local route, control file line, builtin, learned)
    #[arg(short, long)]
    pub verbose: bool,
}
