//! `tern tokenize MODEL (-p TEXT | -f FILE)`: the token ids of a text, like llama.cpp's `llama-tokenize`.
//!
//! MODEL is a `.tern` file, a GGUF file (a vocabulary-only one is enough) or a Hugging Face directory. BOS comes
//! first when the vocabulary says to add it (llama.cpp's rule), unless `--no-bos`. Special-token texts in the
//! input (`<|im_start|>`, `<s>`) become their ids, as llama-tokenize's default (parse special) does. Each line is
//! `{id:>6} -> '{piece}'` with the piece's raw bytes; `--ids-only` prints the ids on one line, separated by spaces.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use tern_tools::tokenize::load_tokenizer;

#[derive(clap::Args)]
pub struct Args {
    /// A .tern model, a GGUF file (vocabulary-only works) or a Hugging Face model directory.
    pub model: PathBuf,
    /// The text to tokenize.
    #[arg(short, long, conflicts_with = "file", required_unless_present = "file")]
    pub prompt: Option<String>,
    /// Read the text from this file (UTF-8; invalid bytes are replaced).
    #[arg(short, long)]
    pub file: Option<PathBuf>,
    /// Print only the ids, separated by spaces, on one line.
    #[arg(long)]
    pub ids_only: bool,
    /// Never add BOS, even when the vocabulary says to.
    #[arg(long)]
    pub no_bos: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let text = match (&args.prompt, &args.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        (None, None) => anyhow::bail!("give the text with -p TEXT or -f FILE"),
    };
    let tok = load_tokenizer(&args.model)?;
    let ids = if args.no_bos {
        tok.encode(&text)?
    } else {
        tok.encode_prompt(&text)?
    };
    let mut out = std::io::stdout().lock();
    if args.ids_only {
        let line: Vec<String> = ids.iter().map(u32::to_string).collect();
        writeln!(out, "{}", line.join(" "))?;
    } else {
        for &id in &ids {
            write!(out, "{id:>6} -> '")?;
            out.write_all(&tok.piece(id).unwrap_or_default())?;
            writeln!(out, "'")?;
        }
    }
    out.flush()?;
    Ok(())
}
