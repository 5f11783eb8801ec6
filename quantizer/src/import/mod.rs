//! Reading source checkpoints into one in-memory [`SourceModel`](source::SourceModel): the GGUF container
//! ([`gguf_file`]) and its Llama-family import ([`gguf`]), Hugging Face directories ([`hf`]), and the
//! `tokenizer.json` every `.tern` file embeds, synthesised from GGUF vocabularies ([`tokenizer`]).

pub mod gguf;
pub mod gguf_file;
pub mod hf;
pub mod source;
pub mod tokenizer;
