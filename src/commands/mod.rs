//! One module per `tern` subcommand.
pub mod inspect;
pub mod convert;
pub mod export_gguf;
pub mod plot;
pub mod quantize;
pub mod perplexity;
pub mod run;
