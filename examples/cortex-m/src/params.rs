// What the firmware runs, shared by build.rs (which sizes the arena from it) and main.rs.

/// Positions the session holds.
pub const CONTEXT: usize = 32;
/// Tokens per forward pass during the prompt.
pub const BATCH: usize = 4;
/// The prompt, as token ids (the model's vocabulary is 512).
pub const PROMPT: [u32; 8] = [1, 17, 42, 99, 123, 7, 300, 511];
/// Tokens generated greedily after it.
pub const GENERATE: usize = 16;
