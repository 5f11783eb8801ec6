//! `tern inspect MODEL`.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Path to a .tern model file.
    pub model: PathBuf,
}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
