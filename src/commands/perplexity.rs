//! `tern perplexity -m MODEL -f TEXT`: perplexity computed the way llama.cpp's `llama-perplexity` does, so the
//! two can be compared on the same text.
//!
//! The text is tokenized whole (BOS first if the model adds one) and cut into non-overlapping chunks of
//! `--ctx` tokens; each chunk is evaluated from an empty cache, with its first token replaced by BOS when the
//! model adds BOS, and only the second half of each chunk is scored: positions `ctx/2 .. ctx−1` predict the
//! tokens after them (`ctx − ctx/2 − 1` scores per chunk). With `nll` the mean negative log-likelihood over
//! all `N` scores and `nll2` the mean of their squares, `PPL = exp(nll)` and its uncertainty is
//! `sqrt((nll2 − nll²) / (N − 1)) · PPL`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use tern_runtime::tokenizer::Tokenizer;
use tern_runtime::{load, KvPrecision, Logits, Session, SessionOptions};

use super::run::{default_threads, parse_kv};

#[derive(clap::Args)]
pub struct Args {
    /// Path to a .tern model file.
    #[arg(short, long)]
    pub model: PathBuf,
    /// Text file to score (UTF-8; invalid bytes are replaced).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Tokens per chunk.
    #[arg(short = 'c', long = "ctx", default_value_t = 512)]
    pub ctx: usize,
    /// Score at most this many chunks (default: all).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Tokens per forward pass.
    #[arg(short = 'b', long, default_value_t = 64)]
    pub batch: usize,
    /// Worker threads (default: the physical cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// KV cache precision: f16 or f32.
    #[arg(long, default_value = "f16", value_parser = parse_kv)]
    pub kv: KvPrecision,
    /// A reference model (e.g. the full-precision teacher, `tern convert --keep f16`) scored on the same chunks:
    /// its perplexity and the share of scored positions where both models predict the same next token.
    #[arg(long, value_name = "MODEL.tern")]
    pub reference: Option<PathBuf>,
}

/// `log softmax(logits)[tok]` as llama.cpp computes it: max in f32, sum of `expf` in f64.
pub fn log_softmax(logits: &[f32], tok: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = logits.iter().map(|&v| f64::from((v - max).exp())).sum();
    let l = logits.get(tok).copied().unwrap_or(f32::NEG_INFINITY);
    f64::from(l - max) - sum.ln()
}

/// Running totals of the scored negative log-likelihoods.
#[derive(Default)]
pub struct Totals {
    pub nll: f64,
    pub nll2: f64,
    pub count: usize,
}

impl Totals {
    pub fn ppl(&self) -> f64 {
        (self.nll / self.count.max(1) as f64).exp()
    }
    /// `(PPL, uncertainty)`; the uncertainty is `None` when the variance estimate is not positive.
    pub fn estimate(&self) -> (f64, Option<f64>) {
        let n = self.count.max(1) as f64;
        let nll = self.nll / n;
        let var = self.nll2 / n - nll * nll;
        let ppl = nll.exp();
        let err = (var > 0.0 && self.count > 1).then(|| (var / (n - 1.0)).sqrt() * ppl);
        (ppl, err)
    }
}

/// Scores one chunk (`tokens.len()` = the context size) from an empty cache; the argmax of every scored position
/// is appended to `predictions` when given.
pub fn score_chunk(
    s: &mut Session<'_>,
    tokens: &[u32],
    totals: &mut Totals,
    mut predictions: Option<&mut Vec<u32>>,
) -> anyhow::Result<()> {
    let n_ctx = tokens.len();
    let first = n_ctx / 2;
    let batch = s.options().max_batch;
    s.reset();
    for (bi, b) in tokens.chunks(batch).enumerate() {
        let start = bi * batch;
        let end = start + b.len();
        // Positions first ..= n_ctx − 2 need logits.
        let which = if end > first { Logits::All } else { Logits::None };
        s.forward(b, which)?;
        if which == Logits::None {
            continue;
        }
        for pos in start.max(first)..end.min(n_ctx - 1) {
            let row = s.logits_row(pos - start).context("missing logits row")?;
            let lp = log_softmax(row, tokens[pos + 1] as usize);
            if let Some(p) = predictions.as_deref_mut() {
                p.push(argmax(row));
            }
            totals.nll -= lp;
            totals.nll2 += lp * lp;
            totals.count += 1;
        }
    }
    Ok(())
}

/// Index of the largest logit (the first on ties).
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let file = load::map(&args.model)?;
    let model = load::model(&file, true).with_context(|| format!("loading {}", args.model.display()))?;
    let tok = Tokenizer::from_model(model.view())?;
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut tokens = tok.encode_prompt(&text)?;
    let n_ctx = args.ctx;
    if n_ctx < 2 {
        bail!("--ctx must be at least 2");
    }
    if tokens.len() < 2 * n_ctx {
        bail!(
            "you need at least {} tokens to evaluate perplexity with a context of {n_ctx} (the text has {})",
            2 * n_ctx,
            tokens.len()
        );
    }
    let n_max = tokens.len() / n_ctx;
    let n_chunk = args.chunks.map_or(n_max, |c| c.min(n_max));
    let threads = args.threads.unwrap_or_else(default_threads);
    let opts = SessionOptions::new(n_ctx, args.batch.clamp(1, n_ctx))
        .with_kv(args.kv)
        .with_threads(threads);
    let cfg = *model.config();
    let mut arena = vec![0u8; opts.arena_bytes(&cfg)?];
    let mut session = Session::new(&model, &mut arena, opts)?;
    eprintln!(
        "{} tokens, {n_chunk} chunks of {n_ctx}, {threads} threads, {} kernels",
        tokens.len(),
        session.kernels().name
    );

    let reference_file = args.reference.as_ref().map(load::map).transpose()?;
    let reference = match (&reference_file, &args.reference) {
        (Some(f), Some(p)) => {
            let m = load::model(f, true).with_context(|| format!("loading {}", p.display()))?;
            if m.config().vocab_size != cfg.vocab_size {
                bail!(
                    "the reference model has another vocabulary ({} vs {})",
                    m.config().vocab_size,
                    cfg.vocab_size
                );
            }
            Some(m)
        }
        _ => None,
    };
    let mut reference_arena = match &reference {
        Some(m) => vec![0u8; opts.arena_bytes(m.config())?],
        None => Vec::new(),
    };
    let mut reference_session = match &reference {
        Some(m) => Some(Session::new(m, &mut reference_arena, opts)?),
        None => None,
    };
    let (mut ours, mut theirs, mut reference_totals) = (Vec::new(), Vec::new(), Totals::default());

    let bos = tok.adds_bos().then(|| tok.bos()).flatten();
    let bar = crate::progress::bar(n_chunk as u64, "perplexity");
    let mut totals = Totals::default();
    let mut per_chunk = Vec::with_capacity(n_chunk);
    let t0 = Instant::now();
    for i in 0..n_chunk {
        let chunk = &mut tokens[i * n_ctx..(i + 1) * n_ctx];
        let original = chunk[0];
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let compare = reference_session.is_some();
        score_chunk(&mut session, chunk, &mut totals, compare.then_some(&mut ours))?;
        if let Some(r) = reference_session.as_mut() {
            score_chunk(r, chunk, &mut reference_totals, Some(&mut theirs))?;
        }
        chunk[0] = original;
        per_chunk.push(format!("[{}]{:.4}", i + 1, totals.ppl()));
        bar.set_position(i as u64 + 1);
        bar.set_message(format!("PPL {:.4}", totals.ppl()));
    }
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{:.2} s ({:.1} tokens/s, {:.2} s per chunk)",
        secs,
        (n_chunk * n_ctx) as f64 / secs.max(1e-9),
        secs / n_chunk.max(1) as f64
    );
    println!("{}", per_chunk.join(","));
    match totals.estimate() {
        (ppl, Some(err)) => println!("Final estimate: PPL = {ppl:.4} +/- {err:.5}"),
        (ppl, None) => println!("Final estimate: PPL = {ppl:.4} (unexpected non-positive variance of log(prob))"),
    }
    if reference_session.is_some() {
        let same = ours.iter().zip(&theirs).filter(|(a, b)| a == b).count();
        let (rppl, rerr) = reference_totals.estimate();
        println!(
            "Reference: PPL = {rppl:.4} +/- {:.5}; same next-token prediction at {same} of {} scored positions \
             ({:.2}%)",
            rerr.unwrap_or(f64::NAN),
            ours.len(),
            100.0 * same as f64 / ours.len().max(1) as f64
        );
    }
    Ok(())
}
