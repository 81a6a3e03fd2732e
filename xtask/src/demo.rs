//! `cargo xtask demo`.

#[derive(Debug, clap::Args)]
pub struct Options {}

pub fn run(_o: &Options) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask demo is not implemented yet")
}
