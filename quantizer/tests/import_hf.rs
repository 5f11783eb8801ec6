//! Hugging Face directory reader: the safetensors twin of tiny-llama.gguf (written by scripts/make_gguf_fixtures.py
//! with llama.cpp's permutation undone in numpy), the RoPE row permutation checked in f64, Llama-3 and BitNet
//! configs, and typed errors for bad directories (written by the tests themselves).

use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tern_format::{Architecture, Role, RopeScaling, RopeStyle, NO_TOKEN};
use tern_quantizer::import::hf::{permute_interleaved_to_rotate_half, permute_rotate_half_to_interleaved};
use tern_quantizer::{load, ImportError};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn hf_twin_of_tiny_llama_imports_identically_to_the_gguf() {
    let from_gguf = load(fixture("tiny-llama.gguf")).unwrap();
    let from_hf = load(fixture("tiny-llama-hf")).unwrap();
    assert_eq!(from_hf.config, from_gguf.config);
    assert_eq!(from_hf.chat_template, from_gguf.chat_template);
    assert_eq!(
        from_hf.tokenizer_json,
        std::fs::read(fixture("tiny-llama-hf/tokenizer.json")).unwrap(),
        "verbatim"
    );
    assert_eq!(from_hf.metadata_value("source.format"), Some("safetensors"));
    assert_eq!(from_hf.metadata_value("source.shards"), Some("2"));
    assert_eq!(from_hf.tensors.len(), from_gguf.tensors.len());
    for t in &from_gguf.tensors {
        let h = from_hf
            .tensor_by_name(&t.name)
            .unwrap_or_else(|| panic!("{} missing from the HF import", t.name));
        assert_eq!((h.role, h.layer, &h.shape), (t.role, t.layer, &t.shape), "{}", t.name);
        // q/k went through un-permute (numpy, llama.cpp's formula inverted) and our permute: bit-identical.
        assert!(
            h.data.iter().zip(&t.data).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{} differs between the GGUF and Hugging Face imports",
            t.name
        );
    }
}

/// Rotates pairs of `x` (one head) by `pos·θ_j`, θ_j = base^(−2j/d): pairs (j, j + d/2) for rotate-half,
/// (2j, 2j + 1) for interleaved.
fn rope(x: &mut [f64], pos: f64, base: f64, interleaved: bool) {
    let d = x.len();
    for j in 0..d / 2 {
        let theta = pos * base.powf(-2.0 * j as f64 / d as f64);
        let (a, b) = if interleaved {
            (2 * j, 2 * j + 1)
        } else {
            (j, j + d / 2)
        };
        let (c, s) = (theta.cos(), theta.sin());
        let (xa, xb) = (x[a], x[b]);
        x[a] = xa * c - xb * s;
        x[b] = xa * s + xb * c;
    }
}

fn matvec(w: &[f32], x: &[f64], cols: usize) -> Vec<f64> {
    w.chunks_exact(cols)
        .map(|row| row.iter().zip(x).map(|(&a, &b)| f64::from(a) * b).sum())
        .collect()
}

#[test]
fn rope_permutation_turns_rotate_half_into_interleaved_in_f64() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (n_heads, n_kv_heads, head_dim, cols) = (3usize, 1usize, 8usize, 5usize);
    let wq: Vec<f32> = (0..n_heads * head_dim * cols)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let wk: Vec<f32> = (0..n_kv_heads * head_dim * cols)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let wq_p = permute_rotate_half_to_interleaved(&wq, n_heads, cols).unwrap();
    let wk_p = permute_rotate_half_to_interleaved(&wk, n_kv_heads, cols).unwrap();
    for (pos_q, pos_k) in [(0.0, 0.0), (5.0, 2.0), (1000.0, 17.0)] {
        let x: Vec<f64> = (0..cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let y: Vec<f64> = (0..cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let (mut q_half, mut k_half) = (matvec(&wq, &x, cols), matvec(&wk, &y, cols));
        let (mut q_int, mut k_int) = (matvec(&wq_p, &x, cols), matvec(&wk_p, &y, cols));
        for h in q_half.chunks_exact_mut(head_dim) {
            rope(h, pos_q, 10_000.0, false);
        }
        for h in q_int.chunks_exact_mut(head_dim) {
            rope(h, pos_q, 10_000.0, true);
        }
        rope(&mut k_half, pos_k, 10_000.0, false);
        rope(&mut k_int, pos_k, 10_000.0, true);
        // Elementwise: interleaved output = rotate-half output with each head's rows permuted the same way.
        let half = head_dim / 2;
        for h in 0..n_heads {
            for j in 0..half {
                for t in 0..2 {
                    let a = q_int[h * head_dim + 2 * j + t];
                    let b = q_half[h * head_dim + j + t * half];
                    assert!((a - b).abs() < 1e-12, "head {h} pair {j}: {a} vs {b}");
                }
            }
        }
        // Attention scores (what the model computes from q and k) are identical.
        for h in 0..n_heads {
            let kv = h / (n_heads / n_kv_heads);
            let score = |q: &[f64], k: &[f64]| -> f64 {
                q[h * head_dim..(h + 1) * head_dim]
                    .iter()
                    .zip(&k[kv * head_dim..(kv + 1) * head_dim])
                    .map(|(a, b)| a * b)
                    .sum()
            };
            let (s_half, s_int) = (score(&q_half, &k_half), score(&q_int, &k_int));
            assert!((s_half - s_int).abs() < 1e-12, "head {h}: {s_half} vs {s_int}");
        }
    }
}

#[test]
fn permutation_matches_its_definition_and_inverts() {
    // One head of dim 6 with one column: rows [0..6] → [0, 3, 1, 4, 2, 5].
    let w: Vec<f32> = (0..6).map(|i| i as f32).collect();
    assert_eq!(
        permute_rotate_half_to_interleaved(&w, 1, 1).unwrap(),
        [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    );
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let w: Vec<f32> = (0..4 * 16 * 3).map(|_| rng.gen()).collect();
    let p = permute_rotate_half_to_interleaved(&w, 4, 3).unwrap();
    assert_ne!(p, w);
    assert_eq!(permute_interleaved_to_rotate_half(&p, 4, 3).unwrap(), w);
    assert!(
        permute_rotate_half_to_interleaved(&w, 5, 3).is_none(),
        "heads must divide rows"
    );
    assert!(
        permute_rotate_half_to_interleaved(&w, 4, 5).is_none(),
        "cols must divide the data"
    );
    assert!(
        permute_rotate_half_to_interleaved(&w[..3 * 3], 1, 3).is_none(),
        "odd head dim"
    );
    assert!(permute_rotate_half_to_interleaved(&w, 0, 3).is_none());
    assert!(permute_rotate_half_to_interleaved(&w, 4, 0).is_none());
}

// ---------------------------------------------------------------------------------------------------------------
// Synthetic directories
// ---------------------------------------------------------------------------------------------------------------

/// A tensor to write: HF name, safetensors dtype, shape, values (exactly representable in the dtype).
struct T {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn encode(dtype: &str, values: &[f32]) -> Vec<u8> {
    match dtype {
        "F32" => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        "F16" => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        "BF16" => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        "I32" => values.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
        other => panic!("{other}"),
    }
}

/// safetensors by hand (u64 header length, JSON header, data), independent of the crate the reader uses.
fn safetensors_bytes(tensors: &[T]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for t in tensors {
        let bytes = encode(t.dtype, &t.values);
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend(bytes);
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("tern-import-hf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) {
        std::fs::write(self.0.join(name), bytes).unwrap();
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const HIDDEN: usize = 8;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = 4;
const FFN: usize = 12;
const VOCAB: usize = 10;

fn llama3_config() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": 1, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "vocab_size": VOCAB,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
        "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": [1, 9], "attention_bias": false,
    })
}

/// Values k/8 for small k: exact in f16 and bf16.
fn values(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-64i32..64) as f32 / 8.0).collect()
}

fn llama_tensors(rng: &mut ChaCha8Rng, bitnet: bool) -> Vec<T> {
    let mut t = |name: &str, dtype: &'static str, shape: &[usize]| T {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        values: values(rng, shape.iter().product()),
    };
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let mut v = vec![
        t("model.embed_tokens.weight", "BF16", &[VOCAB, HIDDEN]),
        t("model.layers.0.input_layernorm.weight", "F32", &[HIDDEN]),
        t("model.layers.0.self_attn.q_proj.weight", "F16", &[q, HIDDEN]),
        t("model.layers.0.self_attn.k_proj.weight", "BF16", &[kv, HIDDEN]),
        t("model.layers.0.self_attn.v_proj.weight", "F32", &[kv, HIDDEN]),
        t("model.layers.0.self_attn.o_proj.weight", "F16", &[HIDDEN, q]),
        t("model.layers.0.post_attention_layernorm.weight", "F32", &[HIDDEN]),
        t("model.layers.0.mlp.gate_proj.weight", "BF16", &[FFN, HIDDEN]),
        t("model.layers.0.mlp.up_proj.weight", "F16", &[FFN, HIDDEN]),
        t("model.layers.0.mlp.down_proj.weight", "F32", &[HIDDEN, FFN]),
        t("model.norm.weight", "F32", &[HIDDEN]),
        t("lm_head.weight", "F16", &[VOCAB, HIDDEN]),
        t("model.layers.0.self_attn.rotary_emb.inv_freq", "F32", &[HEAD_DIM / 2]),
    ];
    if bitnet {
        v.push(t("model.layers.0.self_attn.attn_sub_norm.weight", "F32", &[q]));
        v.push(t("model.layers.0.mlp.ffn_sub_norm.weight", "BF16", &[FFN]));
    }
    v
}

/// Llama-3-style tokenizer.json fragment: the post-processor prepends BOS.
fn tokenizer_with_bos_template() -> Value {
    json!({"version": "1.0", "post_processor": {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                   {"Sequence": {"id": "A", "type_id": 0}}]}]}})
}

fn write_model(dir: &TempDir, config: &Value, tensors: &[T]) {
    dir.write("config.json", serde_json::to_vec_pretty(config).unwrap());
    dir.write(
        "tokenizer.json",
        serde_json::to_vec(&tokenizer_with_bos_template()).unwrap(),
    );
    dir.write("model.safetensors", safetensors_bytes(tensors));
}

#[test]
fn llama3_checkpoint_with_rope_scaling_untied_head_and_mixed_dtypes() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let tensors = llama_tensors(&mut rng, false);
    let dir = TempDir::new("llama3");
    write_model(&dir, &llama3_config(), &tensors);
    dir.write("chat_template.jinja", "{{ messages }}");
    let m = load(&dir.0).unwrap();
    let c = m.config;
    assert_eq!(c.arch, Architecture::Llama);
    assert_eq!(
        (c.hidden_size, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_size),
        (8, 2, 1, 4, 12)
    );
    assert_eq!(
        (c.vocab_size, c.context_length, c.rope_theta, c.norm_eps),
        (10, 131072, 500000.0, 1e-5)
    );
    assert_eq!(
        c.rope_scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192
        }
    );
    assert_eq!(c.rope_style, RopeStyle::Interleaved);
    assert!(!c.tied_embeddings);
    assert_eq!(
        (c.bos_token, c.eos_token, c.pad_token),
        (0, 1, NO_TOKEN),
        "first of the EOS list"
    );
    assert!(
        c.add_bos,
        "the tokenizer's template prepends BOS and tokenizer_config.json does not say otherwise"
    );
    assert_eq!(m.metadata_value("hf.eos_token_ids"), Some("1,9"));
    assert_eq!(m.chat_template.as_deref(), Some("{{ messages }}"));
    assert_eq!(m.tensors.len(), 12, "inv_freq is a buffer, not a weight");
    assert_eq!(m.tensors.first().unwrap().name, "token_embd.weight");
    assert_eq!(m.tensors.last().unwrap().name, "output.weight");
    for t in &tensors {
        let Some(role) = tern_quantizer::import::hf::hf_tensor_role(&t.name).unwrap() else {
            continue;
        };
        let got = m.tensor(role.0, role.1).unwrap();
        assert_eq!(got.shape, t.shape, "{}", t.name);
        let want = match role.0 {
            Role::AttnQ => permute_rotate_half_to_interleaved(&t.values, HEADS, HIDDEN).unwrap(),
            Role::AttnK => permute_rotate_half_to_interleaved(&t.values, KV_HEADS, HIDDEN).unwrap(),
            _ => t.values.clone(),
        };
        assert_eq!(got.data, want, "{} ({})", t.name, t.dtype);
    }
}

#[test]
fn bitnet_checkpoint_maps_sub_norms() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut config = llama3_config();
    config["architectures"] = json!(["BitNetForCausalLM"]);
    config["model_type"] = json!("bitnet");
    config["hidden_act"] = json!("relu2");
    config["rope_scaling"] = Value::Null;
    config["tie_word_embeddings"] = json!(true);
    let tensors = llama_tensors(&mut rng, true);
    let dir = TempDir::new("bitnet");
    write_model(&dir, &config, &tensors);
    dir.write("tokenizer_config.json", r#"{"add_bos_token": false, "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#);
    let m = load(&dir.0).unwrap();
    assert_eq!(m.config.arch, Architecture::BitNetB158);
    assert_eq!(m.config.rope_scaling, RopeScaling::None);
    assert!(
        !m.config.add_bos,
        "tokenizer_config.json's add_bos_token wins over the template"
    );
    assert_eq!(m.chat_template.as_deref(), Some("D"));
    assert_eq!(m.tensor(Role::AttnSubNorm, Some(0)).unwrap().shape, [HEADS * HEAD_DIM]);
    assert_eq!(m.tensor(Role::FfnSubNorm, Some(0)).unwrap().shape, [FFN]);
    // Tied: the stored lm_head copy is ignored.
    assert!(m.tensor(Role::Output, None).is_none());
    assert_eq!(m.metadata_value("source.ignored_tensors"), Some("lm_head.weight"));

    // Without the FFN sub-norm the checkpoint is incomplete.
    let dir2 = TempDir::new("bitnet-missing");
    let without: Vec<T> = tensors
        .into_iter()
        .filter(|t| !t.name.contains("ffn_sub_norm"))
        .collect();
    write_model(&dir2, &config, &without);
    match load(&dir2.0) {
        Err(ImportError::MissingTensor { tensor, .. }) => assert_eq!(tensor, "blk.0.ffn_sub_norm.weight"),
        other => panic!("{other:?}"),
    }
}

/// Writes a model variant and returns the error loading it gives.
fn load_err(tag: &str, edit: impl FnOnce(&mut Value, &mut Vec<T>), after: impl FnOnce(&TempDir)) -> ImportError {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut config = llama3_config();
    let mut tensors = llama_tensors(&mut rng, false);
    edit(&mut config, &mut tensors);
    let dir = TempDir::new(tag);
    write_model(&dir, &config, &tensors);
    after(&dir);
    match load(&dir.0) {
        Ok(_) => panic!("{tag}: loaded"),
        Err(e) => {
            assert!(
                e.path().starts_with(&dir.0),
                "{tag}: error names {}",
                e.path().display()
            );
            e
        }
    }
}

#[test]
fn bad_hugging_face_directories_give_typed_errors() {
    let none = |_: &TempDir| {};
    let e = load_err(
        "no-hidden",
        |c, _| drop(c.as_object_mut().unwrap().remove("hidden_size")),
        none,
    );
    assert!(
        matches!(&e, ImportError::MissingKey { key, .. } if key == "hidden_size"),
        "{e:?}"
    );

    let e = load_err(
        "mistral",
        |c, _| c["architectures"] = json!(["MistralForCausalLM"]),
        none,
    );
    assert!(
        matches!(&e, ImportError::UnsupportedArchitecture { arch, .. } if arch == "MistralForCausalLM"),
        "{e:?}"
    );

    let e = load_err("neg-heads", |c, _| c["num_attention_heads"] = json!(-2), none);
    assert!(
        matches!(&e, ImportError::BadKey { key, .. } if key == "num_attention_heads"),
        "{e:?}"
    );

    let e = load_err(
        "yarn",
        |c, _| c["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0}),
        none,
    );
    assert!(
        matches!(&e, ImportError::Unsupported { what, .. } if what.contains("yarn")),
        "{e:?}"
    );

    let e = load_err("gelu", |c, _| c["hidden_act"] = json!("gelu"), none);
    assert!(matches!(&e, ImportError::Unsupported { .. }), "{e:?}");

    let e = load_err("bias", |c, _| c["attention_bias"] = json!(true), none);
    assert!(matches!(&e, ImportError::Unsupported { .. }), "{e:?}");

    let e = load_err("heads-vs-kv", |c, _| c["num_key_value_heads"] = json!(3), none);
    assert!(
        matches!(
            &e,
            ImportError::InvalidConfig { .. } | ImportError::ShapeMismatch { .. }
        ),
        "{e:?}"
    );

    let e = load_err("i32", |_, t| t[5].dtype = "I32", none);
    assert!(
        matches!(&e, ImportError::UnsupportedTensorType { tensor, .. } if tensor == "model.layers.0.self_attn.o_proj.weight"),
        "{e:?}"
    );

    let e = load_err(
        "shape",
        |_, t| {
            t[9].shape = vec![FFN, HIDDEN];
        },
        none,
    );
    assert!(
        matches!(&e, ImportError::ShapeMismatch { tensor, expected, actual, .. }
            if tensor == "blk.0.ffn_down.weight" && expected == &[HIDDEN, FFN] && actual == &[FFN, HIDDEN]),
        "{e:?}"
    );

    let e = load_err(
        "q-rows",
        |_, t| {
            t[2].shape = vec![HEADS * HEAD_DIM + 1, HIDDEN];
            t[2].values.extend(std::iter::repeat_n(0.0, HIDDEN));
        },
        none,
    );
    assert!(matches!(&e, ImportError::ShapeMismatch { .. }), "{e:?}");

    let e = load_err(
        "unknown",
        |_, t| {
            t.push(T {
                name: "model.layers.0.self_attn.q_proj.bias".into(),
                dtype: "F32",
                shape: vec![8],
                values: vec![0.0; 8],
            })
        },
        none,
    );
    assert!(
        matches!(&e, ImportError::UnexpectedTensor { tensor, .. } if tensor.ends_with("q_proj.bias")),
        "{e:?}"
    );

    let e = load_err("missing-layer", |_, t| t.retain(|x| !x.name.contains("v_proj")), none);
    assert!(
        matches!(&e, ImportError::MissingTensor { tensor, .. } if tensor == "blk.0.attn_v.weight"),
        "{e:?}"
    );

    let e = load_err(
        "truncated",
        |_, _| {},
        |d| {
            let p = d.0.join("model.safetensors");
            let bytes = std::fs::read(&p).unwrap();
            std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        },
    );
    assert!(matches!(&e, ImportError::Safetensors { .. }), "{e:?}");

    let e = load_err(
        "huge-offsets",
        |_, _| {},
        |d| {
            // A header whose offsets point far past the file (the safetensors crate would add them unchecked).
            let header = format!(
                r#"{{"model.norm.weight":{{"dtype":"U8","shape":[{n}],"data_offsets":[0,{n}]}}}}"#,
                n = u64::MAX - 7
            );
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend(header.as_bytes());
            std::fs::write(d.0.join("model.safetensors"), bytes).unwrap();
        },
    );
    assert!(matches!(&e, ImportError::Safetensors { .. }), "{e:?}");

    let e = load_err(
        "no-tokenizer",
        |_, _| {},
        |d| std::fs::remove_file(d.0.join("tokenizer.json")).unwrap(),
    );
    assert!(matches!(&e, ImportError::Tokenizer { .. }), "{e:?}");

    let e = load_err(
        "bad-json",
        |_, _| {},
        |d| d.write("config.json", "{\"hidden_size\": 8,"),
    );
    assert!(matches!(&e, ImportError::Json { .. }), "{e:?}");
    assert!(e.to_string().contains("config.json"), "{e}");

    let e = load_err(
        "no-shards",
        |_, _| {},
        |d| std::fs::remove_file(d.0.join("model.safetensors")).unwrap(),
    );
    assert!(matches!(&e, ImportError::Safetensors { .. }), "{e:?}");

    let e = load_err(
        "index-escape",
        |_, _| {},
        |d| {
            d.write(
                "model.safetensors.index.json",
                r#"{"weight_map": {"model.norm.weight": "../x.safetensors"}}"#,
            )
        },
    );
    assert!(matches!(&e, ImportError::BadKey { .. }), "{e:?}");
}

#[test]
fn untied_config_without_lm_head_is_missing_the_output() {
    let e = load_err("no-head", |_, t| t.retain(|x| x.name != "lm_head.weight"), |_| {});
    assert!(
        matches!(&e, ImportError::MissingTensor { tensor, .. } if tensor == "output.weight"),
        "{e:?}"
    );
    // Without tie_word_embeddings in config.json, a missing head means tied embeddings.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut config = llama3_config();
    config.as_object_mut().unwrap().remove("tie_word_embeddings");
    let tensors: Vec<T> = llama_tensors(&mut rng, false)
        .into_iter()
        .filter(|x| x.name != "lm_head.weight")
        .collect();
    let dir = TempDir::new("implicit-tie");
    write_model(&dir, &config, &tensors);
    assert!(load(&dir.0).unwrap().config.tied_embeddings);
}
