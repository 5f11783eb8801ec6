pub mod engine;
pub fn placeholder() {}
