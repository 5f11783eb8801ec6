//! `tern bench`: prompt-processing and generation speed in the manner of llama.cpp's `llama-bench` (tests
//! `ppN`: N prompt tokens in one forward pass from an empty cache; `tgN`: N tokens decoded one at a time from an
//! empty cache; each after one warm-up run, repeated `-r` times, `t/s` as mean ± standard deviation), next to
//! the bytes of weights read per token and the memory-read bandwidth measured in the same run with the same
//! thread count (the decode roofline).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use tern_format::{Architecture, ModelView, Role, TernaryLayout};
use tern_quantizer::ptq::{HeadFormat, ScaleGranularity};
use tern_runtime::{kernels, Kernels, KvPrecision, Logits, Model, Session, SessionOptions};
use tern_tools::membw::{Bandwidth, Probe, DRAM_PROBE_BYTES};
use tern_tools::synthetic::{self, Storage};

use super::convert::{parse_head, parse_layout, parse_scale};
use super::run::{parse_kv, table_by_name};

#[derive(clap::Args)]
pub struct Args {
    /// Path to a .tern model file.
    #[arg(short, long, required_unless_present = "synthetic", conflicts_with = "synthetic")]
    pub model: Option<PathBuf>,
    /// Benchmark a random ternary model of a named shape instead: smollm2-135m or bitnet-2b.
    #[arg(long)]
    pub synthetic: Option<String>,
    /// Vocabulary of the synthetic model (default: the shape's, 49152).
    #[arg(long)]
    pub vocab: Option<u32>,
    /// Ternary packing of the synthetic model: 2bit or base3.
    #[arg(long, default_value = "2bit", value_parser = parse_layout)]
    pub layout: TernaryLayout,
    /// Scale granularity of the synthetic model's ternary weights.
    #[arg(long, default_value = "per-tensor", value_parser = parse_scale)]
    pub scale: ScaleGranularity,
    /// Embedding and (tied) head of the synthetic model: int8, int4[:G] or f16.
    #[arg(long, default_value = "int8", value_parser = parse_head)]
    pub head: HeadFormat,
    /// Architecture of the synthetic model: llama or bitnet.
    #[arg(long, default_value = "llama", value_parser = parse_arch)]
    pub arch: Architecture,
    /// Prompt lengths to test (ppN; 0 = none).
    #[arg(short = 'p', long = "n-prompt", value_delimiter = ',', default_value = "128")]
    pub n_prompt: Vec<usize>,
    /// Generation lengths to test (tgN; 0 = none).
    #[arg(short = 'n', long = "n-gen", value_delimiter = ',', default_value = "64")]
    pub n_gen: Vec<usize>,
    /// Thread counts to test (default: the physical cores).
    #[arg(short, long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Repetitions of each test.
    #[arg(short, long, default_value_t = 5)]
    pub repetitions: usize,
    /// KV cache precision: f16 or f32.
    #[arg(long, default_value = "f16", value_parser = parse_kv)]
    pub kv: KvPrecision,
    /// Kernel tables to test, by name, or `all` (default: the one `tern run` would use; the TERN_KERNELS
    /// environment variable chooses it there).
    #[arg(short, long, value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// Output format: md, json or csv.
    #[arg(short, long, default_value = "md")]
    pub output: String,
    /// Skip the memory-bandwidth probes.
    #[arg(long)]
    pub no_bandwidth: bool,
}

pub fn parse_arch(s: &str) -> Result<Architecture, String> {
    match s {
        "llama" => Ok(Architecture::Llama),
        "bitnet" | "bitnet-b1.58" => Ok(Architecture::BitNetB158),
        _ => Err(format!("expected llama or bitnet, got {s:?}")),
    }
}

/// What one forward pass over a token reads from the model, and what the model is.
struct ModelFacts {
    name: String,
    file_bytes: usize,
    params: u64,
    /// Bytes of weights and scales read per decoded token: every tensor once, except an untied embedding
    /// (one row).
    weight_bytes_per_token: usize,
}

fn facts(name: String, view: &ModelView<'_>) -> ModelFacts {
    let cfg = view.config();
    let mut params = 0u64;
    let mut bytes = 0usize;
    for t in view.tensors() {
        params += t.shape.numel().unwrap_or(0);
        let all = t.data.len() + t.scales.len() * 4;
        bytes += if t.role == Role::TokenEmbedding && !cfg.tied_embeddings {
            all / (t.shape.rows().max(1) as usize)
        } else {
            all
        };
    }
    ModelFacts {
        name,
        file_bytes: view.file_bytes().len(),
        params,
        weight_bytes_per_token: bytes,
    }
}

/// One result row.
struct Row {
    kernels: &'static str,
    threads: usize,
    test: String,
    /// Tokens per second of each repetition.
    rates: Vec<f64>,
    /// Weight bytes streamed per token for this test (all weights per pass, divided by tokens per pass).
    bytes_per_token: f64,
    /// Bandwidth probe over the same number of bytes as one pass over the weights, same threads.
    roof: Option<Bandwidth>,
}

impl Row {
    fn mean_sd(&self) -> (f64, f64) {
        let n = self.rates.len().max(1) as f64;
        let mean = self.rates.iter().sum::<f64>() / n;
        let var = self.rates.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / (n - 1.0).max(1.0);
        (mean, var.sqrt())
    }
    fn gbps(&self) -> f64 {
        self.mean_sd().0 * self.bytes_per_token / 1e9
    }
    /// Fraction of the roofline (decode only: prefill is compute-bound by design).
    fn roofline(&self) -> Option<f64> {
        let roof = self.roof?;
        self.test.starts_with("tg").then(|| self.gbps() / roof.median_gbps)
    }
}

/// The tables to test: those named, `all`, or the model's (`TERN_KERNELS` or the fastest).
fn tables(names: &[String], model_kernels: &'static Kernels) -> anyhow::Result<Vec<&'static Kernels>> {
    if names.is_empty() {
        return Ok(vec![model_kernels]);
    }
    if names.iter().any(|n| n == "all") {
        return Ok(kernels::available().to_vec());
    }
    names.iter().map(|n| table_by_name(n)).collect()
}

fn time_prompt(s: &mut Session<'_>, tokens: &[u32]) -> anyhow::Result<f64> {
    s.reset();
    let t0 = Instant::now();
    s.forward(tokens, Logits::Last)?;
    Ok(tokens.len() as f64 / t0.elapsed().as_secs_f64().max(1e-9))
}

fn time_gen(s: &mut Session<'_>, tokens: &[u32]) -> anyhow::Result<f64> {
    s.reset();
    let t0 = Instant::now();
    for &t in tokens {
        s.decode(t)?;
    }
    Ok(tokens.len() as f64 / t0.elapsed().as_secs_f64().max(1e-9))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let format = args.output.as_str();
    if !matches!(format, "md" | "json" | "csv") {
        bail!("--output must be md, json or csv, got {format:?}");
    }
    // The model: a mapped file, or a synthetic one written to a temporary file and mapped (so its pages behave
    // like a real model's).
    let (file, name) = match (&args.model, &args.synthetic) {
        (Some(path), _) => (tern_runtime::load::map(path)?, path.display().to_string()),
        (None, Some(shape_name)) => {
            let mut shape = synthetic::shape(shape_name)?;
            if let Some(v) = args.vocab {
                shape.vocab = v;
            }
            let storage = Storage {
                arch: args.arch,
                layout: args.layout,
                scale: args.scale,
                head: args.head,
                seed: 0x7E57,
            };
            let t0 = Instant::now();
            let bytes = synthetic::build(&shape, &storage)?.to_bytes()?;
            let path = std::env::temp_dir().join(format!("tern-synthetic-{}-{}.tern", shape.name, std::process::id()));
            tern_format::write_atomic(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            drop(bytes);
            let file = tern_runtime::load::map(&path);
            // The map keeps the pages; the name can go now (Unix semantics), so nothing is left behind.
            let _ = std::fs::remove_file(&path);
            eprintln!(
                "synthetic {} ({} layout, {} head) built in {:.1} s",
                shape.name,
                match args.layout {
                    TernaryLayout::TwoBit => "2bit",
                    TernaryLayout::Base3 => "base3",
                },
                tern_quantizer::ptq::head_label(args.head),
                t0.elapsed().as_secs_f64()
            );
            (file?, format!("synthetic {}", shape.name))
        }
        (None, None) => bail!("give --model or --synthetic"),
    };
    let model: Model<'_> = tern_runtime::load::model(&file, false)?;
    let f = facts(name, model.view());
    let cfg = *model.config();
    let threads = if args.threads.is_empty() {
        vec![tern_tools::cpu::physical_cores()]
    } else {
        args.threads.clone()
    };
    if threads.contains(&0) {
        bail!("thread counts must be at least 1");
    }
    let tables = tables(&args.kernels, model.kernels())?;
    let max_p = args.n_prompt.iter().copied().max().unwrap_or(0);
    let max_n = args.n_gen.iter().copied().max().unwrap_or(0);
    let ctx = (max_p.max(max_n) + 1).min(cfg.context_length as usize);
    let opts = SessionOptions::new(ctx, max_p.max(1))
        .with_kv(args.kv)
        .with_threads(threads[0]);
    let mut arena = vec![0u8; opts.arena_bytes(&cfg)?];
    let mut session = Session::new(&model, &mut arena, opts)?;
    let vocab = cfg.vocab_size;
    let tokens: Vec<u32> = (0..ctx as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9).wrapping_add(7) % u64::from(vocab)) as u32)
        .collect();

    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "cpu: {} ({} physical cores); tables available: {}; load average {}",
        tern_tools::cpu::model_name(),
        tern_tools::cpu::physical_cores(),
        kernels::available()
            .iter()
            .map(|k| k.name)
            .collect::<Vec<_>>()
            .join(", "),
        loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    // Bandwidth: one probe the size of the weights (the same working set as a decode step, so the same cache
    // behaviour) and one of DRAM, per thread count.
    let mut roofs = Vec::new();
    if !args.no_bandwidth {
        let weights = Probe::new(f.weight_bytes_per_token);
        let dram = Probe::new(DRAM_PROBE_BYTES);
        for &t in &threads {
            let w = weights.measure(t, 7);
            let d = dram.measure(t, 5);
            eprintln!(
                "read bandwidth, {t} threads: {:.1} GB/s over {:.0} MB (the weights' size), {:.1} GB/s over {:.0} MB",
                w.median_gbps,
                w.bytes as f64 / 1e6,
                d.median_gbps,
                d.bytes as f64 / 1e6
            );
            roofs.push((t, w));
        }
    }

    let mut rows = Vec::new();
    for &k in &tables {
        session.set_kernels(k);
        for &t in &threads {
            session.set_threads(t)?;
            let roof = roofs.iter().find(|r| r.0 == t).map(|r| r.1);
            for &p in args.n_prompt.iter().filter(|&&p| p > 0) {
                time_prompt(&mut session, &tokens[..p])?;
                let rates = (0..args.repetitions.max(1))
                    .map(|_| time_prompt(&mut session, &tokens[..p]))
                    .collect::<anyhow::Result<Vec<f64>>>()?;
                rows.push(Row {
                    kernels: k.name,
                    threads: t,
                    test: format!("pp{p}"),
                    rates,
                    bytes_per_token: f.weight_bytes_per_token as f64 / p as f64,
                    roof,
                });
            }
            for &n in args.n_gen.iter().filter(|&&n| n > 0) {
                time_gen(&mut session, &tokens[..1])?;
                let rates = (0..args.repetitions.max(1))
                    .map(|_| time_gen(&mut session, &tokens[..n]))
                    .collect::<anyhow::Result<Vec<f64>>>()?;
                rows.push(Row {
                    kernels: k.name,
                    threads: t,
                    test: format!("tg{n}"),
                    rates,
                    bytes_per_token: f.weight_bytes_per_token as f64,
                    roof,
                });
            }
        }
    }
    print(format, &f, args.kv, &rows);
    Ok(())
}

fn kv_name(kv: KvPrecision) -> &'static str {
    match kv {
        KvPrecision::F16 => "f16",
        KvPrecision::F32 => "f32",
    }
}

fn print(format: &str, f: &ModelFacts, kv: KvPrecision, rows: &[Row]) {
    let size_mib = f.file_bytes as f64 / (1 << 20) as f64;
    let params = f.params as f64;
    let params_s = if params >= 1e9 {
        format!("{:.2} B", params / 1e9)
    } else {
        format!("{:.2} M", params / 1e6)
    };
    match format {
        "json" => {
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    let (mean, sd) = r.mean_sd();
                    serde_json::json!({
                        "model": f.name,
                        "size_bytes": f.file_bytes,
                        "params": f.params,
                        "kernels": r.kernels,
                        "threads": r.threads,
                        "kv": kv_name(kv),
                        "test": r.test,
                        "samples_ts": r.rates,
                        "avg_ts": mean,
                        "stddev_ts": sd,
                        "weight_bytes_per_token": r.bytes_per_token,
                        "weight_gbps": r.gbps(),
                        "read_bandwidth_gbps": r.roof.map(|b| b.median_gbps),
                        "roofline_fraction": r.roofline(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&items).unwrap_or_default());
        }
        "csv" => {
            println!("model,size_bytes,params,kernels,threads,kv,test,avg_ts,stddev_ts,weight_bytes_per_token,weight_gbps,read_bandwidth_gbps,roofline_fraction");
            for r in rows {
                let (mean, sd) = r.mean_sd();
                println!(
                    "\"{}\",{},{},{},{},{},{},{mean:.3},{sd:.3},{:.0},{:.3},{},{}",
                    f.name,
                    f.file_bytes,
                    f.params,
                    r.kernels,
                    r.threads,
                    kv_name(kv),
                    r.test,
                    r.bytes_per_token,
                    r.gbps(),
                    r.roof.map_or(String::new(), |b| format!("{:.3}", b.median_gbps)),
                    r.roofline().map_or(String::new(), |x| format!("{x:.3}")),
                );
            }
        }
        _ => {
            println!("| model | size | params | kernels | threads | kv | test | t/s | weights/token | weight GB/s | roofline |");
            println!("| --- | ---: | ---: | --- | ---: | --- | --- | ---: | ---: | ---: | ---: |");
            for r in rows {
                let (mean, sd) = r.mean_sd();
                println!(
                    "| {} | {size_mib:.1} MiB | {params_s} | {} | {} | {} | {} | {mean:.2} ± {sd:.2} | {:.1} MB | {:.2} | {} |",
                    f.name,
                    r.kernels,
                    r.threads,
                    kv_name(kv),
                    r.test,
                    r.bytes_per_token / 1e6,
                    r.gbps(),
                    match (r.roofline(), r.roof) {
                        (Some(x), Some(b)) => format!("{:.0}% of {:.1} GB/s", 100.0 * x, b.median_gbps),
                        _ => "—".into(),
                    }
                );
            }
        }
    }
}
