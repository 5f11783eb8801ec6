//! `tern inspect MODEL`: header, hyper-parameters, tokenizer summary, tensor table, size and bits per weight.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use tern_format::{MappedFile, ModelView, ParseOptions, RopeScaling, ScaleKind, NO_TOKEN};

#[derive(clap::Args)]
pub struct Args {
    /// Path to a .tern model file.
    pub model: PathBuf,
    /// Skip the per-tensor CRC check (faster on very large files).
    #[arg(long)]
    pub no_verify: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let file = MappedFile::open(&args.model)?;
    let view = ModelView::parse_with(
        &file,
        ParseOptions {
            verify_tensor_checksums: !args.no_verify,
        },
    )
    .with_context(|| format!("{}", args.model.display()))?;
    print!("{}", describe(&view, &args.model.display().to_string()));
    Ok(())
}

fn token(id: u32) -> String {
    if id == NO_TOKEN {
        "none".into()
    } else {
        id.to_string()
    }
}

/// Human-readable report of a parsed model.
pub fn describe(view: &ModelView<'_>, path: &str) -> String {
    let c = view.config();
    let mut o = String::new();
    let _ = writeln!(o, "file:            {path}");
    let _ = writeln!(o, "format:          .tern version {}", tern_format::layout::VERSION);
    let _ = writeln!(
        o,
        "size:            {} bytes ({:.2} MiB)",
        view.file_bytes().len(),
        view.file_bytes().len() as f64 / 1048576.0
    );
    let _ = writeln!(o, "architecture:    {}", c.arch.name());
    let _ = writeln!(o, "hidden size:     {}", c.hidden_size);
    let _ = writeln!(o, "layers:          {}", c.n_layers);
    let _ = writeln!(
        o,
        "heads:           {} (KV heads {}, head dim {})",
        c.n_heads, c.n_kv_heads, c.head_dim
    );
    let _ = writeln!(o, "FFN size:        {}", c.ffn_size);
    let _ = writeln!(o, "vocab:           {}", c.vocab_size);
    let _ = writeln!(o, "context:         {}", c.context_length);
    let scaling = match c.rope_scaling {
        RopeScaling::None => String::from("none"),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context } => format!(
            "llama3 (factor {factor}, low {low_freq_factor}, high {high_freq_factor}, original context {original_context})"
        ),
    };
    let _ = writeln!(
        o,
        "RoPE:            theta {}, scaling {scaling}, pairs {:?}",
        c.rope_theta, c.rope_style
    );
    let _ = writeln!(o, "RMSNorm eps:     {:e}", c.norm_eps);
    let _ = writeln!(o, "tied embeddings: {}", c.tied_embeddings);
    let _ = writeln!(
        o,
        "special tokens:  BOS {} EOS {} PAD {} (add BOS: {})",
        token(c.bos_token),
        token(c.eos_token),
        token(c.pad_token),
        c.add_bos
    );
    match view.tokenizer() {
        Some(t) => {
            let summary = serde_json::from_slice::<serde_json::Value>(t.bytes)
                .map(|j| {
                    let model = &j["model"];
                    let kind = model["type"].as_str().unwrap_or("?").to_string();
                    let vocab = model["vocab"].as_object().map_or(0, |v| v.len());
                    let merges = model["merges"].as_array().map_or(0, |m| m.len());
                    let added = j["added_tokens"].as_array().map_or(0, |a| a.len());
                    format!("{kind}, {vocab} tokens, {merges} merges, {added} added tokens")
                })
                .unwrap_or_else(|e| format!("unparseable JSON ({e})"));
            let _ = writeln!(o, "tokenizer:       tokenizer.json, {} bytes: {summary}", t.bytes.len());
        }
        None => {
            let _ = writeln!(o, "tokenizer:       none");
        }
    }
    let _ = writeln!(
        o,
        "chat template:   {}",
        view.chat_template()
            .map_or("none".to_string(), |t| format!("{} bytes", t.len()))
    );
    let meta: Vec<_> = view.metadata().filter_map(Result::ok).collect();
    if !meta.is_empty() {
        let _ = writeln!(o, "metadata:");
        for (k, v) in meta {
            let v = if v.chars().count() > 100 {
                format!("{}…", v.chars().take(100).collect::<String>())
            } else {
                v.to_string()
            };
            let _ = writeln!(o, "  {k} = {v}");
        }
    }
    let _ = writeln!(o, "tensors:         {}", view.tensor_count());
    let _ = writeln!(
        o,
        "  {:<32} {:<14} {:<14} {:>16} {:>12}",
        "name", "type", "scale", "shape", "bytes"
    );
    let (mut all_w, mut all_b, mut tern_w, mut tern_b) = (0u64, 0u64, 0u64, 0u64);
    let mut mixed: std::collections::BTreeMap<&str, (usize, u64, u64)> = std::collections::BTreeMap::new();
    for t in view.tensors() {
        let scale = match t.scale {
            ScaleKind::None => "-".to_string(),
            ScaleKind::PerTensor => "per-tensor".into(),
            ScaleKind::PerRow => "per-row".into(),
            ScaleKind::PerGroup(g) => format!("group {g}"),
        };
        let shape = t.shape.dims().iter().map(u64::to_string).collect::<Vec<_>>().join("x");
        let _ = writeln!(
            o,
            "  {:<32} {:<14} {:<14} {:>16} {:>12}",
            t.name,
            t.dtype.name(),
            scale,
            shape,
            t.stored_bytes()
        );
        let n = t.shape.numel().unwrap_or(0);
        all_w += n;
        all_b += t.stored_bytes();
        if t.dtype.is_ternary() {
            tern_w += n;
            tern_b += t.stored_bytes();
        } else if t.layer.is_some() && t.shape.dims().len() == 2 {
            // A block matrix stored above ternary: Hessian-aware mixed precision.
            let e = mixed.entry(t.dtype.name()).or_insert((0usize, 0u64, 0u64));
            e.0 += 1;
            e.1 += n;
            e.2 += t.stored_bytes();
        }
    }
    let bpw = |b: u64, w: u64| if w == 0 { 0.0 } else { 8.0 * b as f64 / w as f64 };
    let _ = writeln!(
        o,
        "weights:         {all_w} ({:.1} M), {all_b} bytes of tensor data",
        all_w as f64 / 1e6
    );
    let _ = writeln!(
        o,
        "bits/weight:     {:.3} overall (incl. scales, embeddings, norms)",
        bpw(all_b, all_w)
    );
    if tern_w > 0 {
        let _ = writeln!(
            o,
            "ternary:         {tern_w} weights in {tern_b} bytes: {:.3} bits/weight (incl. scales)",
            bpw(tern_b, tern_w)
        );
    }
    for (dtype, (count, w, b)) in &mixed {
        let _ = writeln!(
            o,
            "mixed precision: {count} block matrices in {dtype}: {w} weights in {b} bytes ({:.3} bits/weight)",
            bpw(*b, *w)
        );
    }
    o
}
