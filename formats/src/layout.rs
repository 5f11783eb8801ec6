//! Fixed numbers of the file layout (FORMAT.md §2–§5).

/// First 8 bytes of every .tern file.
pub const MAGIC: [u8; 8] = *b"TERNMODL";
pub const VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 64;
pub const SECTION_ENTRY_BYTES: usize = 24;
pub const MAX_SECTIONS: u32 = 64;
/// Every section and every tensor data / scale region starts at a multiple of this.
pub const ALIGN: usize = 64;
pub const TENSOR_ENTRY_BYTES: usize = 112;
pub const MAX_TENSORS: u64 = 8192;

/// Section kind codes.
pub mod section {
    pub const CONFIG: u32 = 1;
    pub const METADATA: u32 = 2;
    pub const TOKENIZER: u32 = 3;
    pub const CHAT_TEMPLATE: u32 = 4;
    pub const TENSORS: u32 = 5;
    pub const STRINGS: u32 = 6;
}

/// Tokenizer section payload kinds.
pub mod tokenizer_kind {
    /// The bytes of a Hugging Face `tokenizer.json`.
    pub const HF_JSON: u32 = 1;
}

/// `layer` value of tensors that belong to no block.
pub const NO_LAYER: u32 = u32::MAX;
