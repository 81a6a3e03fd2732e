//! `cargo xtask test`.

#[derive(Debug, clap::Args)]
pub struct Options {}

pub fn run(_o: &Options) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask test is not implemented yet")
}
