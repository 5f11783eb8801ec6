//! `export_gguf` round trips: a small ternary model goes to GGUF and back (through our GGUF reader) with
//! identical ternary values, and gguf-py (llama.cpp's Python package) dequantizes the TQ1_0/TQ2_0 tensors to
//! exactly the values the .tern file means (value × f16(scale)).

use half::f16;
use tern_format::blocks::{ternary2_code, ternary3_code, BlockTernary2, BlockTernary3};
use tern_format::{
    AlignedBytes, Architecture, ElementType, ModelConfig, ModelView, ModelWriter, Role, RopeScaling, RopeStyle,
    ScaleKind, Shape, TensorData, TensorView, TernaryLayout, NO_TOKEN,
};
use tern_quantizer::gguf_export::{export_gguf, TernaryGgufType};
use tern_quantizer::import::gguf_file::GgufFile;

fn config(hidden: u32, ffn: u32) -> ModelConfig {
    ModelConfig {
        arch: Architecture::Llama,
        hidden_size: hidden,
        n_layers: 1,
        n_heads: hidden / 64,
        n_kv_heads: 1,
        head_dim: 64,
        ffn_size: ffn,
        vocab_size: 64,
        context_length: 256,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        rope_style: RopeStyle::Interleaved,
        norm_eps: 1e-5,
        tied_embeddings: true,
        bos_token: 1,
        eos_token: 2,
        pad_token: NO_TOKEN,
        add_bos: false,
    }
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn trit(&mut self) -> i8 {
        (self.next() % 3) as i8 - 1
    }
    fn f32(&mut self) -> f32 {
        (self.next() % 20001) as f32 / 10000.0 - 1.0
    }
}

/// A one-block model: every linear layer ternary with a mix of layouts and scale granularities.
fn model(hidden: u32, ffn: u32, down_scale: ScaleKind) -> Vec<u8> {
    let cfg = config(hidden, ffn);
    let (h, f, kv) = (hidden as usize, ffn as usize, 64usize);
    let mut rng = Lcg(42);
    let mut w = ModelWriter::new(cfg);
    let tok = r#"{"version":"1.0","added_tokens":[{"id":1,"content":"<s>","special":true},{"id":2,"content":"</s>","special":true}],
        "model":{"type":"BPE","vocab":{"a":3,"b":4,"ab":5},"merges":["a b"]}}"#;
    w.tokenizer_json(tok.as_bytes().to_vec());
    let emb: Vec<f32> = (0..64 * h).map(|_| rng.f32()).collect();
    w.add_tensor(TensorData::int8_rows(
        "token_embd.weight",
        Role::TokenEmbedding,
        None,
        Shape::new(&[64, h as u64]).unwrap(),
        &emb,
    ))
    .unwrap();
    let ones = vec![1.0f32; h];
    w.add_tensor(TensorData::f32(
        "blk.0.attn_norm.weight",
        Role::AttnNorm,
        Some(0),
        Shape::new(&[h as u64]).unwrap(),
        &ones,
    ))
    .unwrap();
    w.add_tensor(TensorData::f32(
        "blk.0.ffn_norm.weight",
        Role::FfnNorm,
        Some(0),
        Shape::new(&[h as u64]).unwrap(),
        &ones,
    ))
    .unwrap();
    w.add_tensor(TensorData::f32(
        "output_norm.weight",
        Role::OutputNorm,
        None,
        Shape::new(&[h as u64]).unwrap(),
        &ones,
    ))
    .unwrap();
    let specs = [
        ("attn_q", Role::AttnQ, h, h, TernaryLayout::TwoBit, ScaleKind::PerTensor),
        ("attn_k", Role::AttnK, kv, h, TernaryLayout::Base3, ScaleKind::PerRow),
        ("attn_v", Role::AttnV, kv, h, TernaryLayout::TwoBit, ScaleKind::PerRow),
        (
            "attn_output",
            Role::AttnOutput,
            h,
            h,
            TernaryLayout::Base3,
            ScaleKind::PerTensor,
        ),
        (
            "ffn_gate",
            Role::FfnGate,
            f,
            h,
            TernaryLayout::TwoBit,
            ScaleKind::PerRow,
        ),
        ("ffn_up", Role::FfnUp, f, h, TernaryLayout::TwoBit, ScaleKind::PerTensor),
        ("ffn_down", Role::FfnDown, h, f, TernaryLayout::TwoBit, down_scale),
    ];
    for (name, role, rows, cols, layout, scale) in specs {
        let q: Vec<i8> = (0..rows * cols).map(|_| rng.trit()).collect();
        let n = scale.count(rows as u64, cols as u64).unwrap() as usize;
        let scales: Vec<f32> = (0..n).map(|_| 0.01 + rng.f32().abs() * 0.05).collect();
        let shape = Shape::new(&[rows as u64, cols as u64]).unwrap();
        let t = TensorData::ternary(
            &format!("blk.0.{name}.weight"),
            role,
            Some(0),
            shape,
            layout,
            &q,
            scale,
            scales,
        )
        .unwrap();
        w.add_tensor(t).unwrap();
    }
    w.to_bytes().unwrap()
}

/// What each element of a .tern tensor means once its scale is rounded to f16, as GGUF stores it.
fn expected_values(t: &TensorView<'_>) -> Vec<f32> {
    let (rows, cols) = (t.shape.rows() as usize, t.shape.cols() as usize);
    let rb = t.row_bytes();
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let row = &t.data[r * rb..(r + 1) * rb];
        for i in 0..cols {
            let scale_index = match t.scale {
                ScaleKind::PerTensor => 0,
                ScaleKind::PerRow => r,
                ScaleKind::PerGroup(g) => r * cols.div_ceil(g as usize) + i / g as usize,
                ScaleKind::None => usize::MAX,
            };
            let (q, s) = match t.dtype {
                ElementType::Ternary2 => (
                    ternary2_code(&bytemuck::cast_slice::<_, BlockTernary2>(row)[i / 64], i % 64) as f32 - 1.0,
                    t.scales[scale_index],
                ),
                ElementType::Ternary3 => (
                    ternary3_code(&bytemuck::cast_slice::<_, BlockTernary3>(row)[i / 64], i % 64) as f32 - 1.0,
                    t.scales[scale_index],
                ),
                ElementType::Int8 => (row[i] as i8 as f32, t.scales[r]),
                ElementType::F32 => (f32::from_le_bytes(row[4 * i..4 * i + 4].try_into().unwrap()), 1.0),
                _ => unreachable!(),
            };
            out.push(q * f16::from_f32(s).to_f32());
        }
    }
    out
}

fn round_trip(bytes: &[u8], ty: TernaryGgufType) -> (Vec<u8>, Vec<(String, Vec<f32>)>) {
    let aligned = AlignedBytes::from_slice(bytes);
    let view = ModelView::parse(&aligned).unwrap();
    let gguf = export_gguf(&view, ty).unwrap();
    let file = GgufFile::from_bytes("export.gguf", gguf.clone()).unwrap();
    let mut expected = Vec::new();
    for t in view.tensors() {
        let info = file
            .tensor_info(t.name)
            .unwrap_or_else(|| panic!("{} missing from the GGUF", t.name));
        assert_eq!(
            info.shape(),
            t.shape.dims().iter().map(|&d| d as usize).collect::<Vec<_>>(),
            "{}",
            t.name
        );
        let want = if t.dtype == ElementType::F32 {
            t.data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        } else {
            expected_values(&t)
        };
        let got = file.dequantize(info).unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{} ({:?}) element {i}: {g} vs {w}",
                t.name,
                info.ggml_type
            );
        }
        // The ternary values themselves: dividing by the block's f16 scale recovers exactly −1, 0, +1.
        if t.dtype.is_ternary() {
            for (g, w) in got.iter().zip(&want) {
                if *w != 0.0 {
                    assert!((g / w.abs()).abs() == 1.0);
                }
            }
        }
        expected.push((t.name.to_string(), want));
    }
    (gguf, expected)
}

#[test]
fn tq2_0_and_q2_0_round_trip_exactly() {
    // hidden 320: rows of 320 are not multiples of 256 → Q2_0; ffn_down rows of 512 → TQ2_0.
    let bytes = model(320, 512, ScaleKind::PerGroup(256));
    let (gguf, _) = round_trip(&bytes, TernaryGgufType::Tq2_0);
    let file = GgufFile::from_bytes("e.gguf", gguf).unwrap();
    assert_eq!(
        file.tensor_info("blk.0.ffn_down.weight").unwrap().ggml_type.name(),
        "tq2_0"
    );
    assert_eq!(
        file.tensor_info("blk.0.attn_q.weight").unwrap().ggml_type.name(),
        "q2_0"
    );
    assert_eq!(file.get("general.architecture").and_then(|v| v.as_str()), Some("llama"));
    assert_eq!(
        file.get("llama.embedding_length").and_then(|v| v.as_integer()),
        Some(320)
    );
    let tokens = file.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).unwrap();
    assert_eq!(tokens.len(), 64);
    assert_eq!(tokens[5].as_str(), Some("ab"));
}

#[test]
fn tq1_0_round_trips_exactly() {
    let bytes = model(256, 512, ScaleKind::PerRow);
    let (gguf, _) = round_trip(&bytes, TernaryGgufType::Tq1_0);
    let file = GgufFile::from_bytes("e.gguf", gguf).unwrap();
    assert_eq!(
        file.tensor_info("blk.0.ffn_gate.weight").unwrap().ggml_type.name(),
        "tq1_0"
    );
}

#[test]
fn groups_smaller_than_the_block_are_refused() {
    let bytes = model(256, 512, ScaleKind::PerGroup(64));
    let aligned = AlignedBytes::from_slice(&bytes);
    let view = ModelView::parse(&aligned).unwrap();
    let err = export_gguf(&view, TernaryGgufType::Tq2_0).unwrap_err().to_string();
    assert!(
        err.contains("blk.0.ffn_down.weight") && err.contains("multiple"),
        "{err}"
    );
}

/// gguf-py, the reference implementation of the GGUF types in llama.cpp's repository, reads the export and
/// dequantizes it to the same values. Needs `pip install gguf numpy` (done by scripts/test.sh and CI).
#[test]
fn gguf_py_dequantizes_the_export_identically() {
    for ty in [TernaryGgufType::Tq2_0, TernaryGgufType::Tq1_0] {
        // All rows multiples of 256: gguf-py 0.19 does not know Q2_0.
        let bytes = model(256, 512, ScaleKind::PerTensor);
        let (gguf, expected) = round_trip(&bytes, ty);
        let dir = std::env::temp_dir().join(format!("tern-gguf-export-{}-{ty:?}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.gguf");
        std::fs::write(&path, gguf).unwrap();
        for (name, values) in &expected {
            std::fs::write(dir.join(format!("{name}.f32")), bytemuck::cast_slice(values)).unwrap();
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/check_gguf_export.py");
        let out = std::process::Command::new("python3")
            .arg(script)
            .arg(&path)
            .arg(&dir)
            .output()
            .expect("python3");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "gguf-py check failed ({ty:?}):\n{text}");
        assert!(
            text.contains(&format!("{} tensors checked, 0 mismatches", expected.len())),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
