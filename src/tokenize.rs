//! The tokenizer of a model, a GGUF file or a Hugging Face directory, as `tern tokenize` and the tokenizer
//! tests load it: a `.tern` file's embedded `tokenizer.json`, the `tokenizer.json` the importer synthesises from a
//! GGUF vocabulary (metadata only: vocabulary-only GGUFs work), or a Hugging Face directory's own. All three end
//! in the runtime's [`Tokenizer`], the one `tern run` and `tern perplexity` encode with.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use tern_format::layout::MAGIC;
use tern_format::{MappedFile, ModelView};
use tern_quantizer::import::gguf_file::GgufFile;
use tern_quantizer::import::hf::tokenizer_from_hf_dir;
use tern_quantizer::import::tokenizer::{tokenizer_from_gguf, VocabTokenizer};
use tern_runtime::tokenizer::Tokenizer;

/// What kind of file or directory `path` is, by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerSource {
    Tern,
    Gguf,
    HfDir,
}

pub fn source_kind(path: &Path) -> anyhow::Result<TokenizerSource> {
    if path.is_dir() {
        return Ok(TokenizerSource::HfDir);
    }
    let mut head = [0u8; 8];
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = f
        .read(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    let head = head.get(..n).unwrap_or_default();
    if head == MAGIC {
        Ok(TokenizerSource::Tern)
    } else if head.starts_with(b"GGUF") {
        Ok(TokenizerSource::Gguf)
    } else {
        bail!(
            "{}: neither a .tern model, a GGUF file nor a Hugging Face directory",
            path.display()
        )
    }
}

fn from_vocab(v: &VocabTokenizer) -> anyhow::Result<Tokenizer> {
    Ok(Tokenizer::new(
        &v.json,
        v.special.bos,
        v.special.eos,
        v.special.add_bos,
        v.chat_template.as_deref(),
    )?)
}

/// Loads the tokenizer of `path` (see the module docs).
pub fn load_tokenizer(path: &Path) -> anyhow::Result<Tokenizer> {
    let what = || format!("loading the tokenizer of {}", path.display());
    match source_kind(path)? {
        TokenizerSource::Tern => {
            let file = MappedFile::open(path).with_context(what)?;
            let view = ModelView::parse(&file).with_context(what)?;
            Ok(Tokenizer::from_model(&view).with_context(what)?)
        }
        TokenizerSource::Gguf => {
            let g = GgufFile::open(path)?;
            from_vocab(&tokenizer_from_gguf(&g)?).with_context(what)
        }
        TokenizerSource::HfDir => from_vocab(&tokenizer_from_hf_dir(path)?).with_context(what),
    }
}
