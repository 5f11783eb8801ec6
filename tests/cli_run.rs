//! `tern run` and `tern perplexity` end to end on a small random model with a byte-level BPE tokenizer.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use tern_format::{
    Architecture, ModelConfig, ModelWriter, Role, RopeScaling, RopeStyle, ScaleKind, Shape, TensorData, TernaryLayout,
    NO_TOKEN,
};
use tern_runtime::{Logits, Model, Session, SessionOptions};

const VOCAB: u32 = 263;
const IM_START: u32 = 257;
const IM_END: u32 = 258;

/// GPT-2 byte-level BPE over single bytes, three special tokens and a few merges.
fn tokenizer_json() -> Vec<u8> {
    let mut bs: Vec<u32> = (33..=126).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut vocab = serde_json::Map::new();
    for (b, c) in bs.iter().zip(&cs) {
        vocab.insert(char::from_u32(*c).unwrap().to_string(), json!(b));
    }
    let specials = [(256, "<s>"), (IM_START, "<|im_start|>"), (IM_END, "<|im_end|>")];
    for (id, s) in specials {
        vocab.insert(s.into(), json!(id));
    }
    let merges = [("h", "e"), ("l", "l"), ("Ġ", "w"), ("he", "ll")];
    for (id, (a, b)) in (259..).zip(merges) {
        vocab.insert(format!("{a}{b}"), json!(id));
    }
    let added: Vec<_> = specials
        .iter()
        .map(|(id, s)| {
            json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    serde_json::to_vec(&json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>()}
    }))
    .unwrap()
}

fn model_bytes(add_bos: bool) -> Vec<u8> {
    let cfg = ModelConfig {
        arch: Architecture::Llama,
        hidden_size: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        ffn_size: 96,
        vocab_size: VOCAB,
        context_length: 128,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        rope_style: RopeStyle::Half,
        norm_eps: 1e-5,
        tied_embeddings: true,
        bos_token: 256,
        eos_token: IM_END,
        pad_token: NO_TOKEN,
        add_bos,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut w = ModelWriter::new(cfg);
    w.tokenizer_json(tokenizer_json());
    w.chat_template(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
         {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    );
    let shape = |d: &[u64]| Shape::new(d).unwrap();
    let emb: Vec<f32> = (0..VOCAB * 64).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    w.add_tensor(TensorData::int8_rows(
        "token_embd.weight",
        Role::TokenEmbedding,
        None,
        shape(&[VOCAB as u64, 64]),
        &emb,
    ))
    .unwrap();
    let ones = vec![1.0f32; 96];
    for l in 0..2u32 {
        for (role, rows, cols) in [
            (Role::AttnQ, 64, 64),
            (Role::AttnK, 32, 64),
            (Role::AttnV, 32, 64),
            (Role::AttnOutput, 64, 64),
            (Role::FfnGate, 96, 64),
            (Role::FfnUp, 96, 64),
            (Role::FfnDown, 64, 96),
        ] {
            let t: Vec<i8> = (0..rows * cols).map(|_| rng.gen_range(-1i8..=1)).collect();
            let name = format!("blk.{l}.{}.weight", role.gguf_name());
            let td = TensorData::ternary(
                &name,
                role,
                Some(l),
                shape(&[rows, cols]),
                TernaryLayout::TwoBit,
                &t,
                ScaleKind::PerTensor,
                vec![0.15],
            )
            .unwrap();
            w.add_tensor(td).unwrap();
        }
        for role in [Role::AttnNorm, Role::FfnNorm] {
            let name = format!("blk.{l}.{}.weight", role.gguf_name());
            w.add_tensor(TensorData::f32(&name, role, Some(l), shape(&[64]), &ones[..64]))
                .unwrap();
        }
    }
    w.add_tensor(TensorData::f32(
        "output_norm.weight",
        Role::OutputNorm,
        None,
        shape(&[64]),
        &ones[..64],
    ))
    .unwrap();
    w.to_bytes().unwrap()
}

struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli_run_{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.tern"), model_bytes(false)).unwrap();
        std::fs::write(dir.join("bos.tern"), model_bytes(true)).unwrap();
        let text = "hello world, the quick brown fox jumps over the lazy dog. ".repeat(8);
        std::fs::write(dir.join("text.txt"), text).unwrap();
        Self { dir }
    }
    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }
}

fn tern(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn run_streams_text_and_reports_speed() {
    let f = Fixture::new("run");
    let m = f.path("model.tern");
    let args = ["run", "-m", &m, "-p", "hello", "-n", "12", "--temp", "0", "-t", "2"];
    let out = tern(&args, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(stdout.starts_with("hello"), "{stdout:?}");
    assert!(stderr.contains("prompt: 2 tokens in"), "{stderr}");
    assert!(stderr.contains("tokens/s)\ngeneration: "), "{stderr}");
    // Greedy: the same text every time, whatever the thread count.
    let again = tern(
        &["run", "-m", &m, "-p", "hello", "-n", "12", "--temp", "0", "-t", "1"],
        None,
    );
    assert_eq!(text(&again.stdout), stdout);
    // Seeded sampling is reproducible.
    let s1 = tern(
        &[
            "run", "-m", &m, "-p", "hello", "-n", "12", "--temp", "1.5", "--seed", "9",
        ],
        None,
    );
    let s2 = tern(
        &[
            "run", "-m", &m, "-p", "hello", "-n", "12", "--temp", "1.5", "--seed", "9",
        ],
        None,
    );
    assert!(s1.status.success());
    assert_eq!(s1.stdout, s2.stdout);
    assert!(text(&s1.stderr).contains("seed 9"));
}

#[test]
fn chat_with_prompt_and_interactive() {
    let f = Fixture::new("chat");
    let m = f.path("model.tern");
    let out = tern(
        &["run", "-m", &m, "--chat", "-p", "hi", "-n", "6", "--system", "be nice"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Two turns from stdin, then end of input.
    let out = tern(
        &["run", "-m", &m, "-n", "5", "--temp", "0"],
        Some("hi\n\nhello again\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.matches("generation: ").count(), 2, "{stderr}");
    // The second turn reuses the cache: only its new text is prefilled.
    let prompts: Vec<usize> = stderr
        .lines()
        .filter_map(|l| l.split("prompt: ").nth(1))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(prompts.len(), 2);
    let first_turn = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
    assert!(prompts[0] <= first_turn.len());
    assert!(prompts[1] < prompts[0] + "hello again".len() + 40, "{prompts:?}");
}

#[test]
fn run_errors_are_one_line() {
    let f = Fixture::new("errors");
    let m = f.path("model.tern");
    let long = "x ".repeat(200);
    let out = tern(&["run", "-m", &m, "-p", &long, "--ctx", "16"], None);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("error: context full"), "{stderr}");
    assert!(!stderr.contains("panicked"));
    let out = tern(&["run", "-m", &f.path("missing.tern"), "-p", "x"], None);
    assert!(!out.status.success());
    assert!(text(&out.stderr).starts_with("error: "));
    let out = tern(&["run", "-m", &m, "-p", "x", "--ctx", "4096"], None);
    assert!(text(&out.stderr).contains("max_context exceeds the model's context length"));
}

/// llama-perplexity's computation, written out independently over the runtime's logits.
fn expected_ppl(bytes: &[u8], tokens: &[u32], n_ctx: usize, n_chunk: usize, bos: Option<u32>) -> (f64, f64) {
    let aligned = tern_format::AlignedBytes::from_slice(bytes);
    let model = Model::new(tern_format::ModelView::parse(&aligned).unwrap()).unwrap();
    let opts = SessionOptions::new(n_ctx, n_ctx);
    let mut arena = vec![0u8; opts.arena_bytes(model.config()).unwrap()];
    let mut s = Session::new(&model, &mut arena, opts).unwrap();
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    for c in 0..n_chunk {
        let mut chunk = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        s.reset();
        s.forward(&chunk, Logits::All).unwrap();
        for j in n_ctx / 2..n_ctx - 1 {
            let row: Vec<f64> = s.logits_row(j).unwrap().iter().map(|&v| f64::from(v)).collect();
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            let lp = row[chunk[j + 1] as usize] - lse;
            nll -= lp;
            nll2 += lp * lp;
            count += 1;
        }
    }
    let n = count as f64;
    let (nll, nll2) = (nll / n, nll2 / n);
    let ppl = nll.exp();
    (ppl, ((nll2 - nll * nll) / (n - 1.0)).sqrt() * ppl)
}

fn final_estimate(stdout: &str) -> (f64, f64) {
    let last = stdout.lines().last().unwrap();
    let rest = last
        .strip_prefix("Final estimate: PPL = ")
        .unwrap_or_else(|| panic!("{last}"));
    let (a, b) = rest.split_once(" +/- ").unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

#[test]
fn perplexity_matches_the_llama_cpp_method() {
    let f = Fixture::new("ppl");
    let model_file = tern_format::AlignedBytes::from_slice(&std::fs::read(f.path("model.tern")).unwrap());
    let tk =
        tern_runtime::tokenizer::Tokenizer::from_model(&tern_format::ModelView::parse(&model_file).unwrap()).unwrap();
    let raw = std::fs::read_to_string(f.path("text.txt")).unwrap();
    let ids = tk.encode(&raw).unwrap();
    for (file, bos) in [("model.tern", None), ("bos.tern", Some(256u32))] {
        let m = f.path(file);
        let out = tern(
            &[
                "perplexity",
                "-m",
                &m,
                "-f",
                &f.path("text.txt"),
                "--ctx",
                "32",
                "--chunks",
                "3",
                "-b",
                "7",
            ],
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let (ppl, err) = final_estimate(&text(&out.stdout));
        // With BOS the text's token list starts with it (as llama.cpp tokenizes), shifting the chunks.
        let mut toks = ids.clone();
        if let Some(b) = bos {
            toks.insert(0, b);
        }
        let bytes = std::fs::read(&m).unwrap();
        let (want_ppl, want_err) = expected_ppl(&bytes, &toks, 32, 3, bos);
        assert!((ppl - want_ppl).abs() <= 1e-3 * want_ppl, "{file}: {ppl} vs {want_ppl}");
        assert!(
            (err - want_err).abs() <= 1e-3 * want_err + 1e-4,
            "{file}: {err} vs {want_err}"
        );
    }
    let m = f.path("model.tern");
    let out = tern(
        &["perplexity", "-m", &m, "-f", &f.path("text.txt"), "--ctx", "512"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("you need at least 1024 tokens"),
        "{}",
        text(&out.stderr)
    );
}
