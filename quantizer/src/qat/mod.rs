pub mod hestia;
