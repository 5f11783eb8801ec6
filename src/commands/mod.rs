//! One module per `tern` subcommand.
pub mod bench;
pub mod convert;
pub mod export_gguf;
pub mod hessian;
pub mod inspect;
pub mod perplexity;
pub mod plot;
pub mod quantize;
pub mod run;
pub mod tokenize;
pub mod train_bench;

/// Sizes rayon's global pool (the training engine's threads) when `--threads` was given; default: all cores.
pub fn configure_rayon_threads(threads: Option<usize>) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(k) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(k)
            .build_global()
            .context("configuring the thread pool")?;
    }
    Ok(())
}
