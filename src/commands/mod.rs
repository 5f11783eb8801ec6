//! One module per `tern` subcommand.
pub mod inspect;
