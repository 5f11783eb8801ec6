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
pub mod train_bench;
