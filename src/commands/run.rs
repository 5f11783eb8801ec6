//! `tern run -m MODEL [-p PROMPT]`: generate text, streamed as it is produced, then report prompt and
//! generation speed. Without a prompt: an interactive chat using the model's chat template.

use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tern_runtime::tokenizer::{ChatMessage, Tokenizer};
use tern_runtime::{load, KvPrecision, Sampler, SamplingParams, Session, SessionOptions};

#[derive(clap::Args)]
pub struct Args {
    /// Path to a .tern model file.
    #[arg(short, long)]
    pub model: PathBuf,
    /// Prompt to continue. Without one, `tern run` starts an interactive chat.
    #[arg(short, long)]
    pub prompt: Option<String>,
    /// Most tokens to generate (per turn in chat).
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    pub n_predict: usize,
    /// Sampling temperature; 0 picks the most likely token (greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    /// Keep the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the most likely tokens up to this cumulative probability (1 = all).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0 = none).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalty for repeating recent tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty considers.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed (default: from the clock; printed so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads (default: the physical cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Kernel table to run (scalar, avx2, avx512, neon, neon-dotprod; default: the fastest this CPU runs, or
    /// the one the TERN_KERNELS environment variable names).
    #[arg(short = 'k', long)]
    pub kernels: Option<String>,
    /// Wrap the prompt in the model's chat template (instruct models).
    #[arg(long)]
    pub chat: bool,
    /// System message for chat.
    #[arg(long)]
    pub system: Option<String>,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(short = 'c', long = "ctx")]
    pub ctx: Option<usize>,
    /// Tokens per prefill batch.
    #[arg(short = 'b', long, default_value_t = 64)]
    pub batch: usize,
    /// KV cache precision: f16 or f32.
    #[arg(long, default_value = "f16", value_parser = parse_kv)]
    pub kv: KvPrecision,
}

pub fn parse_kv(s: &str) -> Result<KvPrecision, String> {
    match s {
        "f16" => Ok(KvPrecision::F16),
        "f32" => Ok(KvPrecision::F32),
        _ => Err(format!("expected f16 or f32, got {s:?}")),
    }
}

/// Default thread count: the machine's physical cores (hyper-threads share a core's SIMD units and bandwidth).
pub fn default_threads() -> usize {
    tern_tools::cpu::physical_cores()
}

/// The kernel table called `name`, or an error listing the tables this CPU runs.
pub fn table_by_name(name: &str) -> anyhow::Result<&'static tern_runtime::Kernels> {
    tern_runtime::kernels::by_name(name).with_context(|| {
        let have: Vec<&str> = tern_runtime::kernels::available().iter().map(|k| k.name).collect();
        format!(
            "kernel table {name:?} is not available on this CPU (available: {})",
            have.join(", ")
        )
    })
}

/// Applies `--kernels NAME` (else the table `Model::new` chose: the fastest, or the one `TERN_KERNELS` names).
pub fn choose_kernels(model: &mut tern_runtime::Model<'_>, name: Option<&str>) -> anyhow::Result<()> {
    if let Some(name) = name {
        model.set_kernels(table_by_name(name)?);
    }
    Ok(())
}

struct Speed {
    prompt_tokens: usize,
    prompt_time: Duration,
    gen_tokens: usize,
    gen_time: Duration,
}

impl Speed {
    fn report(&self) {
        let rate = |n: usize, t: Duration| n as f64 / t.as_secs_f64().max(1e-9);
        eprintln!(
            "prompt: {} tokens in {:.2} s ({:.1} tokens/s)",
            self.prompt_tokens,
            self.prompt_time.as_secs_f64(),
            rate(self.prompt_tokens, self.prompt_time)
        );
        eprintln!(
            "generation: {} tokens in {:.2} s ({:.1} tokens/s)",
            self.gen_tokens,
            self.gen_time.as_secs_f64(),
            rate(self.gen_tokens, self.gen_time)
        );
    }
}

/// Samples and streams up to `max_new` tokens after the logits the session holds; stops at a stop token
/// (not fed to the model) or when the context is full. Returns the text and the number of tokens decoded.
fn generate(
    s: &mut Session<'_>,
    sampler: &mut Sampler,
    tok: &Tokenizer,
    context: &[u32],
    max_new: usize,
) -> anyhow::Result<(String, usize, Duration)> {
    let mut stream = tok.stream(context);
    let mut text = String::new();
    let mut out = io::stdout().lock();
    let start = Instant::now();
    let mut n = 0;
    for _ in 0..max_new {
        let next = s.sample(sampler)?;
        if tok.is_stop(next) {
            break;
        }
        let piece = stream.push(next)?;
        out.write_all(piece.as_bytes())?;
        out.flush()?;
        text.push_str(&piece);
        if s.remaining() == 0 {
            eprintln!("\n[context of {} tokens is full]", s.options().max_context);
            break;
        }
        s.decode(next)?;
        n += 1;
    }
    let rest = stream.finish()?;
    out.write_all(rest.as_bytes())?;
    out.flush()?;
    text.push_str(&rest);
    Ok((text, n, start.elapsed()))
}

/// Prompt ids with BOS when the model wants it and the text does not already start with it.
fn with_bos(tok: &Tokenizer, mut ids: Vec<u32>) -> Vec<u32> {
    if let (true, Some(b)) = (tok.adds_bos(), tok.bos()) {
        if ids.first() != Some(&b) {
            ids.insert(0, b);
        }
    }
    ids
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let file = load::map(&args.model)?;
    let mut model = load::model(&file, true).with_context(|| format!("loading {}", args.model.display()))?;
    choose_kernels(&mut model, args.kernels.as_deref())?;
    let tok = Tokenizer::from_model(model.view())?;
    let cfg = *model.config();
    let ctx = args.ctx.unwrap_or((cfg.context_length as usize).min(4096));
    let threads = args.threads.unwrap_or_else(default_threads);
    let opts = SessionOptions::new(ctx, args.batch.max(1))
        .with_kv(args.kv)
        .with_threads(threads);
    let mut arena = vec![0u8; opts.arena_bytes(&cfg)?];
    let mut session = Session::new(&model, &mut arena, opts)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let mut sampler = Sampler::new(SamplingParams {
        temperature: args.temp,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: args.repeat_last_n,
        seed,
    });
    eprintln!(
        "{}: {} blocks, hidden {}, vocab {}; context {ctx}, {threads} threads, {} kernels, seed {seed}",
        cfg.arch.name(),
        cfg.n_layers,
        cfg.hidden_size,
        cfg.vocab_size,
        session.kernels().name
    );

    let Some(prompt) = args.prompt.as_deref() else {
        return chat(&mut session, &mut sampler, &tok, &args);
    };
    let ids = if args.chat {
        let mut msgs = Vec::new();
        if let Some(sys) = &args.system {
            msgs.push(ChatMessage::new("system", sys));
        }
        msgs.push(ChatMessage::new("user", prompt));
        with_bos(&tok, tok.encode(&tok.apply_chat_template(&msgs, true)?)?)
    } else {
        print!("{prompt}");
        tok.encode_prompt(prompt)?
    };
    if ids.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let t0 = Instant::now();
    session.prefill(&ids)?;
    let prompt_time = t0.elapsed();
    let (_, gen_tokens, gen_time) = generate(&mut session, &mut sampler, &tok, &ids, args.n_predict)?;
    println!();
    Speed {
        prompt_tokens: ids.len(),
        prompt_time,
        gen_tokens,
        gen_time,
    }
    .report();
    Ok(())
}

/// Interactive chat: each turn renders the whole conversation with the template and feeds the session only
/// the text it has not seen (the KV cache keeps the rest); if the history no longer fits, it starts over
/// from the conversation's latest turn.
fn chat(s: &mut Session<'_>, sampler: &mut Sampler, tok: &Tokenizer, args: &Args) -> anyhow::Result<()> {
    let mut messages: Vec<ChatMessage> = Vec::new();
    if let Some(sys) = &args.system {
        messages.push(ChatMessage::new("system", sys));
    }
    // Text whose tokens the session holds.
    let mut consumed = String::new();
    let stdin = io::stdin();
    let mut lines = stdin.lock().lines();
    eprintln!("chat: type a message, Ctrl-D to quit");
    loop {
        eprint!("> ");
        io::stderr().flush()?;
        let Some(line) = lines.next() else { break };
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        messages.push(ChatMessage::new("user", &line));
        let rendered = tok.apply_chat_template(&messages, true)?;
        let ids = match rendered.strip_prefix(consumed.as_str()) {
            Some(delta) if s.pos() > 0 => tok.encode(delta)?,
            _ => {
                s.reset();
                with_bos(tok, tok.encode(&rendered)?)
            }
        };
        let ids = if ids.len() + 1 > s.remaining() {
            // Start over with only the system message (if any) and this turn.
            s.reset();
            let keep = messages.iter().take_while(|m| m.role == "system").count();
            messages.drain(keep..messages.len() - 1);
            let ids = with_bos(tok, tok.encode(&tok.apply_chat_template(&messages, true)?)?);
            if ids.len() + 1 > s.remaining() {
                eprintln!(
                    "[message too long for the context of {} tokens]",
                    s.options().max_context
                );
                messages.pop();
                consumed.clear();
                continue;
            }
            ids
        } else {
            ids
        };
        let t0 = Instant::now();
        s.prefill(&ids)?;
        let prompt_time = t0.elapsed();
        let (reply, gen_tokens, gen_time) = generate(s, sampler, tok, &ids, args.n_predict)?;
        println!();
        Speed {
            prompt_tokens: ids.len(),
            prompt_time,
            gen_tokens,
            gen_time,
        }
        .report();
        consumed = tok.apply_chat_template(&messages, true)? + &reply;
        messages.push(ChatMessage::new("assistant", &reply));
    }
    Ok(())
}
