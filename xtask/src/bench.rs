//! `cargo xtask bench`.

#[derive(Debug, clap::Args)]
pub struct Options {}

pub fn run(_o: &Options) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask bench is not implemented yet")
}
