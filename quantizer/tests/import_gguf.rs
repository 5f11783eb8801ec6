//! GGUF reader tests against fixtures written by scripts/make_gguf_fixtures.py with the `gguf` PyPI package
//! (0.19.0): metadata of every value type, dequantization of every supported type, and a complete tiny Llama.

use std::path::PathBuf;

use serde_json::{json, Value};
use tern_format::{Architecture, Role, RopeScaling, RopeStyle};
use tern_quantizer::import::gguf_file::{GgmlType, GgufFile, MetaType, MetaValue};
use tern_quantizer::{load, ImportError};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_f32_file(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len() % 4, 0);
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn tiny_meta() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("tiny_meta.json")).unwrap()).unwrap()
}

/// gguf-py's names for the value types (GGUFValueType).
fn py_type_name(t: MetaType) -> &'static str {
    match t {
        MetaType::U8 => "UINT8",
        MetaType::I8 => "INT8",
        MetaType::U16 => "UINT16",
        MetaType::I16 => "INT16",
        MetaType::U32 => "UINT32",
        MetaType::I32 => "INT32",
        MetaType::F32 => "FLOAT32",
        MetaType::Bool => "BOOL",
        MetaType::String => "STRING",
        MetaType::Array => "ARRAY",
        MetaType::U64 => "UINT64",
        MetaType::I64 => "INT64",
        MetaType::F64 => "FLOAT64",
    }
}

/// The JSON form the fixture script writes: explicit types, floats as bit patterns.
fn meta_to_json(v: &MetaValue) -> Value {
    let ty = py_type_name(v.meta_type());
    match v {
        MetaValue::F32(f) => json!({"type": ty, "bits": f.to_bits()}),
        MetaValue::F64(f) => json!({"type": ty, "bits": f.to_bits()}),
        MetaValue::Array(elem, items) => {
            json!({"type": ty, "elem": py_type_name(*elem), "items": items.iter().map(meta_to_json).collect::<Vec<_>>()})
        }
        MetaValue::U8(x) => json!({"type": ty, "value": x}),
        MetaValue::I8(x) => json!({"type": ty, "value": x}),
        MetaValue::U16(x) => json!({"type": ty, "value": x}),
        MetaValue::I16(x) => json!({"type": ty, "value": x}),
        MetaValue::U32(x) => json!({"type": ty, "value": x}),
        MetaValue::I32(x) => json!({"type": ty, "value": x}),
        MetaValue::U64(x) => json!({"type": ty, "value": x}),
        MetaValue::I64(x) => json!({"type": ty, "value": x}),
        MetaValue::Bool(x) => json!({"type": ty, "value": x}),
        MetaValue::String(x) => json!({"type": ty, "value": x}),
    }
}

#[test]
fn tiny_gguf_header_alignment_and_tensor_infos_match_the_writer() {
    let g = GgufFile::open(fixture("tiny.gguf")).unwrap();
    let meta = tiny_meta();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 64, "general.alignment = 64 must override the default 32");
    assert_eq!(g.data_start() % 64, 0);
    let expected = meta["tensors"].as_array().unwrap();
    assert_eq!(g.tensors().len(), expected.len());
    for (t, e) in g.tensors().iter().zip(expected) {
        assert_eq!(t.name, e["name"].as_str().unwrap());
        assert_eq!(
            t.ggml_type.name().to_ascii_uppercase(),
            e["type"].as_str().unwrap().to_ascii_uppercase()
        );
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape(), shape, "{}", t.name);
        assert_eq!(t.offset % 64, 0, "{}: offsets are multiples of the alignment", t.name);
        assert_eq!(Some(t.n_bytes), t.ggml_type.row_bytes(t.cols()).map(|rb| rb * t.rows()));
    }
}

#[test]
fn tiny_gguf_metadata_of_every_type_matches_the_writer() {
    let g = GgufFile::open(fixture("tiny.gguf")).unwrap();
    let meta = tiny_meta();
    let expected = meta["metadata"].as_object().unwrap();
    assert_eq!(g.metadata().len(), expected.len(), "key count");
    let mut types_seen = std::collections::HashSet::new();
    for (key, value) in g.metadata() {
        let want = expected.get(key).unwrap_or_else(|| panic!("unexpected key {key}"));
        assert_eq!(&meta_to_json(value), want, "{key}");
        types_seen.insert(py_type_name(value.meta_type()));
        if let MetaValue::Array(elem, _) = value {
            types_seen.insert(py_type_name(*elem));
        }
    }
    assert_eq!(
        types_seen.len(),
        13,
        "every GGUF value type is exercised: {types_seen:?}"
    );
    // Typed getters.
    assert_eq!(g.get_u32("test.u32").unwrap(), Some(4_000_000_000));
    assert_eq!(g.get_u32("test.u8").unwrap(), Some(200));
    assert!(
        matches!(g.get_u32("test.i8"), Err(ImportError::BadKey { .. })),
        "negative value for u32"
    );
    assert!(matches!(g.get_u32("test.string"), Err(ImportError::BadKey { .. })));
    assert!(matches!(g.require_u32("no.such.key"), Err(ImportError::MissingKey { key, .. }) if key == "no.such.key"));
    // 3.14159 as written by the script (its bits; clippy would take the literal for an approximation of pi).
    assert_eq!(
        g.get_f64("test.f32").unwrap(),
        Some(f64::from(f32::from_bits(1_078_530_000)))
    );
    assert_eq!(
        g.get_str_array("test.array.string").unwrap().unwrap(),
        ["a", "bb", "", "ünicøde"]
    );
    assert_eq!(
        g.get_int_array("test.array.u64").unwrap().unwrap(),
        [0, u64::MAX as i128]
    );
}

/// Exact comparison is the honest bound: for every type, the gguf package's numpy code and ours do the same f32
/// operations in the same order (f16 → f32 widening is exact, then one multiply and at most one add/subtract), and
/// Rust never fuses them into an FMA. So any difference, even one ulp, is a bug.
#[test]
fn tiny_gguf_dequantization_is_bit_identical_to_gguf_py() {
    let g = GgufFile::open(fixture("tiny.gguf")).unwrap();
    let mut checked = std::collections::BTreeSet::new();
    for t in g.tensors() {
        if !t.ggml_type.can_dequantize() {
            continue;
        }
        let expected = read_f32_file(&fixture(&format!("tiny_dequant/{}.f32", t.name)));
        let got = g.dequantize(t).unwrap();
        assert_eq!(got.len(), expected.len(), "{}", t.name);
        for (i, (a, b)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{} element {i}: {a} vs gguf-py {b}", t.name);
        }
        checked.insert(t.ggml_type.name());
    }
    let want = [
        "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "tq1_0",
        "tq2_0",
    ];
    for w in want {
        assert!(checked.contains(w), "{w} not covered by the fixture");
    }
}

#[test]
fn dequantize_rows_equals_slices_of_the_whole_tensor() {
    let g = GgufFile::open(fixture("tiny.gguf")).unwrap();
    for t in g.tensors().iter().filter(|t| t.ggml_type.can_dequantize()) {
        let all = g.dequantize(t).unwrap();
        let cols = t.cols() as usize;
        for first in 0..t.rows() {
            for count in 0..=(t.rows() - first) {
                let part = g.dequantize_rows(t, first, count).unwrap();
                let start = first as usize * cols;
                assert_eq!(
                    part,
                    all[start..start + count as usize * cols],
                    "{} rows {first}+{count}",
                    t.name
                );
            }
        }
        assert!(matches!(
            g.dequantize_rows(t, t.rows(), 1),
            Err(ImportError::BadTensor { .. })
        ));
        assert!(matches!(
            g.dequantize_rows(t, 1, u64::MAX),
            Err(ImportError::BadTensor { .. })
        ));
    }
}

#[test]
fn unsupported_type_is_a_typed_error_but_its_raw_bytes_are_readable() {
    let g = GgufFile::open(fixture("tiny.gguf")).unwrap();
    let meta = tiny_meta();
    let t = g.tensor_info("q8_1.unsupported").unwrap();
    assert_eq!(t.ggml_type, GgmlType::Q8_1);
    match g.dequantize(t) {
        Err(ImportError::UnsupportedTensorType { tensor, dtype, .. }) => {
            assert_eq!(tensor, "q8_1.unsupported");
            assert!(dtype.contains("q8_1"), "{dtype}");
        }
        other => panic!("expected UnsupportedTensorType, got {other:?}"),
    }
    let want_hex = meta["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "q8_1.unsupported")
        .unwrap()["raw_hex"]
        .as_str()
        .unwrap()
        .to_string();
    let got_hex: String = g.tensor_bytes(t).unwrap().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(got_hex, want_hex);
}

#[test]
fn raw_bytes_of_quantized_tensors_are_the_stored_blocks() {
    // Q8_0 stores an f16 scale then 32 int8 per block: re-derive the dequantized values from the raw bytes.
    let g = GgufFile::open(fixture("tiny.gguf")).unwrap();
    let t = g.tensor_info("q8_0.matrix").unwrap();
    let raw = g.tensor_bytes(t).unwrap();
    assert_eq!(raw.len() as u64, t.n_bytes);
    let mut manual = Vec::new();
    for block in raw.chunks_exact(34) {
        let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
        manual.extend(block[2..].iter().map(|&q| q as i8 as f32 * d));
    }
    assert_eq!(manual, g.dequantize(t).unwrap());
}

#[test]
fn tiny_llama_gguf_loads_into_a_validated_source_model() {
    let m = load(fixture("tiny-llama.gguf")).unwrap();
    let c = m.config;
    assert_eq!(c.arch, Architecture::Llama);
    assert_eq!(
        (
            c.hidden_size,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            c.ffn_size
        ),
        (32, 2, 2, 1, 16, 64)
    );
    assert_eq!((c.vocab_size, c.context_length), (271, 256));
    assert_eq!(c.rope_theta, 10_000.0);
    assert_eq!(c.norm_eps, 1e-5);
    assert_eq!(c.rope_scaling, RopeScaling::None);
    assert_eq!(c.rope_style, RopeStyle::Interleaved);
    assert!(c.tied_embeddings);
    assert_eq!((c.bos_token, c.eos_token, c.pad_token, c.add_bos), (1, 2, 2, false));
    assert_eq!(m.tensors.len(), 2 + 2 * 9);
    assert!(m.chat_template.as_deref().unwrap().contains("<|im_start|>"));
    assert_eq!(m.metadata_value("general.name"), Some("tern tiny llama"));
    assert_eq!(m.metadata_value("source.format"), Some("gguf"));

    let q = m.tensor(Role::AttnQ, Some(1)).unwrap();
    assert_eq!(
        (q.name.as_str(), q.shape.as_slice()),
        ("blk.1.attn_q.weight", &[32usize, 32][..])
    );
    let k = m.tensor(Role::AttnK, Some(0)).unwrap();
    assert_eq!(k.shape, [16, 32]);
    assert_eq!(m.tensor(Role::FfnDown, Some(0)).unwrap().shape, [32, 64]);
    assert_eq!(m.tensor(Role::OutputNorm, None).unwrap().shape, [32]);
    assert!(m.tensor(Role::Output, None).is_none());
    assert_eq!(m.output_head().unwrap().name, "token_embd.weight");

    // Values equal the reader's dequantization (which the tiny.gguf test ties to gguf-py).
    let g = GgufFile::open(fixture("tiny-llama.gguf")).unwrap();
    for t in &m.tensors {
        assert_eq!(
            t.data,
            g.dequantize(g.tensor_info(&t.name).unwrap()).unwrap(),
            "{}",
            t.name
        );
    }
}

#[test]
fn tiny_llama_tokenizer_matches_the_hand_written_tokenizer_json() {
    use tokenizers::Tokenizer;
    let m = load(fixture("tiny-llama.gguf")).unwrap();
    let synthesized = Tokenizer::from_bytes(&m.tokenizer_json).unwrap();
    let reference = Tokenizer::from_file(fixture("tiny-llama-hf/tokenizer.json")).unwrap();
    // Ids by hand: 3 specials, then byte b at id 3 + b, then the 12 merges' results at 259.. in merge order.
    // "the capital": the pre-tokenizer splits "the" | " capital"; "the" → t + "he" (no "t he" merge),
    // " capital" → merges 5,6,7,8,9,10,11 in rank order give "Ġcapital" (id 270).
    let ids = synthesized.encode("the capital", false).unwrap().get_ids().to_vec();
    assert_eq!(ids, [3 + u32::from(b't'), 260, 270]);
    for s in [
        "the capital",
        " the the  the\tthe\n\nthe",
        "Digits 1234 and 5.67",
        "caf\u{e9} na\u{ef}ve \u{6771}\u{4eac} \u{1f680}",
        "<|im_start|>user\nHello<|im_end|>\n",
        "",
        "   ",
    ] {
        let a = synthesized.encode(s, false).unwrap();
        let b = reference.encode(s, false).unwrap();
        assert_eq!(a.get_ids(), b.get_ids(), "{s:?}");
        assert_eq!(synthesized.decode(a.get_ids(), false).unwrap(), s, "round trip {s:?}");
    }
}

#[test]
fn not_gguf_and_wrong_version_are_typed_errors() {
    let bytes = std::fs::read(fixture("tiny.gguf")).unwrap();
    let mut not = bytes.clone();
    not[0] = b'X';
    assert!(matches!(
        GgufFile::from_bytes("x.gguf", not),
        Err(ImportError::NotGguf { .. })
    ));
    assert!(matches!(
        GgufFile::from_bytes("x.gguf", b"GG".to_vec()),
        Err(ImportError::NotGguf { .. })
    ));
    for version in [0u32, 1, 4, u32::MAX] {
        let mut v = bytes.clone();
        v[4..8].copy_from_slice(&version.to_le_bytes());
        match GgufFile::from_bytes("x.gguf", v) {
            Err(ImportError::UnsupportedGgufVersion { version: got, .. }) => assert_eq!(got, version),
            other => panic!("version {version}: {other:?}"),
        }
    }
    // Version 2 has the same layout as 3 for everything this reader uses.
    let mut v2 = bytes.clone();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(GgufFile::from_bytes("x.gguf", v2).unwrap().version(), 2);
    // Cut one byte into the last tensor's data (the writer pads after it, so the file's last byte is padding).
    let g = GgufFile::from_bytes("x.gguf", bytes.clone()).unwrap();
    let last = g.tensors().last().unwrap();
    let cut = (g.data_start() + last.offset + last.n_bytes - 1) as usize;
    let err = GgufFile::from_bytes("dir/x.gguf", bytes[..cut].to_vec()).unwrap_err();
    assert!(matches!(err, ImportError::Truncated { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("dir/x.gguf: truncated: data of tensor 'q8_1.unsupported'"),
        "{err}"
    );
}

#[test]
fn load_rejects_paths_that_are_not_models() {
    let err = load(fixture("no-such-model.gguf")).unwrap_err();
    assert!(matches!(err, ImportError::Io { .. }), "{err:?}");
    let err = load(fixture("tiny_dequant")).unwrap_err();
    assert!(matches!(err, ImportError::UnrecognizedInput { .. }), "{err:?}");
    // A valid GGUF that is not a Llama model.
    let err = load(fixture("tiny.gguf")).unwrap_err();
    match err {
        ImportError::UnsupportedArchitecture { arch, .. } => assert_eq!(arch, "tinytest"),
        other => panic!("{other:?}"),
    }
}

/// A metadata-only GGUF (no tensors), written by hand, for tokenizer synthesis tests.
fn gguf_with_metadata(kv: &[(&str, MetaValue)]) -> GgufFile {
    let kv: Vec<(String, MetaValue)> = kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    GgufFile::from_bytes("handmade.gguf", gguf_bytes(&kv, &[])).unwrap()
}

/// GGUF v3 bytes written by hand, as the GGUF specification lays them out: header, metadata, tensor infos
/// (dims in ggml order, innermost first), then the f32 tensors' data at 32-byte aligned offsets.
fn gguf_bytes(kv: &[(String, MetaValue)], tensors: &[(String, Vec<u64>, Vec<f32>)]) -> Vec<u8> {
    const ALIGN: usize = 32;
    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
        match v {
            MetaValue::U8(x) => out.push(*x),
            MetaValue::I8(x) => out.extend(x.to_le_bytes()),
            MetaValue::U16(x) => out.extend(x.to_le_bytes()),
            MetaValue::I16(x) => out.extend(x.to_le_bytes()),
            MetaValue::U32(x) => out.extend(x.to_le_bytes()),
            MetaValue::I32(x) => out.extend(x.to_le_bytes()),
            MetaValue::F32(x) => out.extend(x.to_le_bytes()),
            MetaValue::U64(x) => out.extend(x.to_le_bytes()),
            MetaValue::I64(x) => out.extend(x.to_le_bytes()),
            MetaValue::F64(x) => out.extend(x.to_le_bytes()),
            MetaValue::String(s) => put_str(out, s),
            MetaValue::Bool(b) => out.push(u8::from(*b)),
            MetaValue::Array(elem, items) => {
                out.extend((*elem as u32).to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| put_value(out, i));
            }
        }
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        put_str(&mut out, k);
        out.extend((v.meta_type() as u32).to_le_bytes());
        put_value(&mut out, v);
    }
    let mut data = Vec::new();
    for (name, dims, values) in tensors {
        put_str(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(0u32.to_le_bytes()); // GGML_TYPE_F32
        data.resize(data.len().next_multiple_of(ALIGN), 0);
        out.extend((data.len() as u64).to_le_bytes());
        values.iter().for_each(|v| data.extend(v.to_le_bytes()));
    }
    if !tensors.is_empty() {
        out.resize(out.len().next_multiple_of(ALIGN), 0);
        out.extend(data);
    }
    out
}

/// Llama 3.1's RoPE frequency divisors as llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel`)
/// computes them for `rope_freqs.weight`, written out here in f64 independently of the code under test.
fn llama31_divisors(head_dim: usize, theta: f64, factor: f64, low: f64, high: f64, original: f64) -> Vec<f64> {
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// tiny-llama.gguf rewritten with f32 tensors, `extra` tensors appended.
fn tiny_llama_with(extra: &[(String, Vec<u64>, Vec<f32>)]) -> PathBuf {
    let g = GgufFile::open(fixture("tiny-llama.gguf")).unwrap();
    let kv = g.metadata().to_vec();
    let mut tensors: Vec<(String, Vec<u64>, Vec<f32>)> = g
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.dims.clone(), g.dequantize(t).unwrap()))
        .collect();
    tensors.extend(extra.iter().cloned());
    let path = std::env::temp_dir().join(format!(
        "tern-rope-freqs-{}-{}.gguf",
        std::process::id(),
        extra.iter().map(|t| t.2.len()).sum::<usize>()
    ));
    std::fs::write(&path, gguf_bytes(&kv, &tensors)).unwrap();
    path
}

/// A GGUF carrying Llama-3.1 RoPE scaling as llama.cpp stores it (`rope_freqs.weight`, no scaling metadata)
/// imports into `RopeScaling::Llama3`, and the runtime's rotary frequencies then equal the Llama 3.1 formula.
#[test]
fn rope_freqs_import_as_llama3_scaling_and_the_runtime_uses_them() {
    // tiny-llama: head dim 16, θ = 10⁴, so wavelengths 2π·10^(i/2); with original context 1024, low 1 and high
    // 32 the band [32, 1024] holds pairs 2, 3 and 4, pairs 0–1 keep their frequency and 5–7 are slowed.
    let (head_dim, theta) = (16usize, 10_000.0f64);
    let (factor, low, high, original) = (8.0, 1.0, 32.0, 1024.0);
    let divisors: Vec<f32> = llama31_divisors(head_dim, theta, factor, low, high, original)
        .iter()
        .map(|&d| d as f32)
        .collect();
    assert_eq!(
        divisors.iter().filter(|&&d| d > 1.0 && d < 8.0).count(),
        3,
        "{divisors:?}"
    );
    let path = tiny_llama_with(&[("rope_freqs.weight".into(), vec![8], divisors.clone())]);
    let m = load(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let RopeScaling::Llama3 {
        factor: f,
        low_freq_factor: lo,
        high_freq_factor: hi,
        original_context,
    } = m.config.rope_scaling
    else {
        panic!("imported as {:?}", m.config.rope_scaling)
    };
    eprintln!("recovered factor {f}, low {lo}, high {hi}, original context {original_context}");
    assert_eq!((f, original_context), (8.0, 1024));
    assert!(
        (f64::from(lo) - low).abs() < 1e-5 && (f64::from(hi) - high).abs() < 1e-4,
        "{lo} {hi}"
    );
    // The factors are in the config, not a tensor of the model.
    assert!(m.tensors.iter().all(|t| t.name != "rope_freqs.weight"));
    assert_eq!(m.tensors.len(), 2 + 2 * 9);

    // The runtime's inverse frequencies against θ^(−2i/d) / divisor_i computed directly in f64.
    let mut inv = vec![0.0f64; head_dim / 2];
    tern_runtime::ops::rope_inv_freq(&m.config, &mut inv);
    let want: Vec<f64> = llama31_divisors(head_dim, theta, factor, low, high, original)
        .iter()
        .enumerate()
        .map(|(i, d)| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64) / d)
        .collect();
    let worst = inv
        .iter()
        .zip(&want)
        .map(|(g, w)| (g / w - 1.0).abs())
        .fold(0.0f64, f64::max);
    eprintln!("runtime inverse frequencies vs the Llama 3.1 formula: max relative error {worst:.2e}");
    // Measured 4.8e-8 (the band edges are fitted from f32 divisors).
    assert!(worst < 5e-7, "{inv:?} vs {want:?}");
    // The scaling is in effect: the band and the long wavelengths are slowed (the last pair by `factor`).
    let unscaled = |i: usize| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
    assert!((2..8).all(|i| inv[i] < 0.99 * unscaled(i)), "{inv:?}");
    assert!((inv[7] * factor / unscaled(7) - 1.0).abs() < 1e-9);

    // Divisors of another shape (no linear band) are refused with a typed error, not imported wrongly.
    let mut bent = divisors;
    bent[3] = (f64::from(bent[3]) * 1.01) as f32;
    let path = tiny_llama_with(&[("rope_freqs.weight".into(), vec![8], bent)]);
    let err = load(&path).unwrap_err();
    let _ = std::fs::remove_file(&path);
    assert!(
        matches!(&err, ImportError::Unsupported { what, .. } if what.contains("rope_freqs.weight")),
        "{err}"
    );
}

/// The pre-tokenizer types differ in how they split digit runs. Vocabulary: the 256 byte-level symbols (byte b at
/// id b, digits are ASCII so their symbol is the digit itself) plus merges "3 4" (rank 0), "1 2", "12 3".
/// On "1234": gpt-2 keeps the run whole, so "3 4" fires first → 12, 34; llama-bpe splits runs into groups of at
/// most three, "123" | "4" → 123, 4; smollm splits every digit → 1, 2, 3, 4.
#[test]
fn pre_tokenizer_types_split_digits_as_llama_cpp_defines_them() {
    use tern_quantizer::import::tokenizer::tokenizer_json_from_gguf;
    use tokenizers::Tokenizer;
    // GPT-2's byte → symbol map: printable Latin-1 bytes map to themselves, the rest to U+0100 onwards.
    let mut symbols = Vec::new();
    let mut next = 256u32;
    for b in 0u32..256 {
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        symbols.push(char::from_u32(if printable { b } else { next }).unwrap().to_string());
        if !printable {
            next += 1;
        }
    }
    let mut tokens = symbols.clone();
    tokens.extend(["34", "12", "123"].map(String::from));
    let (id_34, id_12, id_123) = (256u32, 257u32, 258u32);
    let strings = |v: &[String]| {
        MetaValue::Array(
            MetaType::String,
            v.iter().map(|s| MetaValue::String(s.clone())).collect(),
        )
    };
    let merges: Vec<String> = ["3 4", "1 2", "12 3"].map(String::from).to_vec();
    let digit = |c: char| u32::from(c as u8);
    for (pre, expected) in [
        ("gpt-2", vec![id_12, id_34]),
        ("llama-bpe", vec![id_123, digit('4')]),
        ("smollm", vec![digit('1'), digit('2'), digit('3'), digit('4')]),
        ("qwen2", vec![digit('1'), digit('2'), digit('3'), digit('4')]),
        ("default", vec![id_123, digit('4')]),
    ] {
        let g = gguf_with_metadata(&[
            ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
            ("tokenizer.ggml.pre", MetaValue::String(pre.into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.merges", strings(&merges)),
        ]);
        let tok = Tokenizer::from_bytes(tokenizer_json_from_gguf(&g).unwrap()).unwrap();
        assert_eq!(tok.encode("1234", false).unwrap().get_ids(), expected, "{pre}");
        let s = "Hello, w\u{f6}rld 1234!\n";
        assert_eq!(
            tok.decode(tok.encode(s, false).unwrap().get_ids(), false).unwrap(),
            s,
            "{pre}"
        );
    }
    // Unsupported tokenizer kinds and pre-tokenizers are typed errors naming them.
    for (kv_model, kv_pre, key, value) in [
        ("bert", "default", "tokenizer.ggml.model", "bert"),
        ("t5", "default", "tokenizer.ggml.model", "t5"),
        ("gpt2", "deepseek-llm", "tokenizer.ggml.pre", "deepseek-llm"),
        ("gpt2", "no-such-pre", "tokenizer.ggml.pre", "no-such-pre"),
    ] {
        let g = gguf_with_metadata(&[
            ("tokenizer.ggml.model", MetaValue::String(kv_model.into())),
            ("tokenizer.ggml.pre", MetaValue::String(kv_pre.into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.merges", strings(&merges)),
        ]);
        match tokenizer_json_from_gguf(&g) {
            Err(e @ ImportError::UnsupportedTokenizer { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&format!("{key} = '{value}'")), "{msg}");
            }
            other => panic!(
                "{kv_model}/{kv_pre}: expected UnsupportedTokenizer, got {:?}",
                other.map(|j| j.len())
            ),
        }
    }
    // Broken vocabularies are typed errors too.
    for (kv_model, kv_pre, kv_merges, what) in [
        (
            "gpt2",
            "gpt-2",
            vec!["3 9 9".to_string()],
            "merge part not in the vocabulary",
        ),
        ("gpt2", "gpt-2", vec!["34".to_string()], "merge without a space"),
    ] {
        let g = gguf_with_metadata(&[
            ("tokenizer.ggml.model", MetaValue::String(kv_model.into())),
            ("tokenizer.ggml.pre", MetaValue::String(kv_pre.into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.merges", strings(&kv_merges)),
        ]);
        assert!(
            matches!(tokenizer_json_from_gguf(&g), Err(ImportError::Tokenizer { .. })),
            "{what}"
        );
    }
}
