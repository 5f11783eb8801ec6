//! `tern inspect` on a file written by the format's writer, and on corrupted copies of it.

use std::process::Command;

use tern_format::{
    Architecture, ModelConfig, ModelWriter, Role, RopeScaling, RopeStyle, ScaleKind, Shape, TensorData, TernaryLayout,
};

fn model_bytes() -> Vec<u8> {
    let cfg = ModelConfig {
        arch: Architecture::BitNetB158,
        hidden_size: 128,
        n_layers: 1,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 32,
        ffn_size: 192,
        vocab_size: 40,
        context_length: 256,
        rope_theta: 500000.0,
        rope_scaling: RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192,
        },
        rope_style: RopeStyle::Interleaved,
        norm_eps: 1e-5,
        tied_embeddings: true,
        bos_token: 0,
        eos_token: 1,
        pad_token: tern_format::NO_TOKEN,
        add_bos: true,
    };
    let mut w = ModelWriter::new(cfg);
    w.metadata("general.source", "cli test");
    let emb: Vec<f32> = (0..40 * 128).map(|i| (i % 17) as f32 - 8.0).collect();
    w.add_tensor(TensorData::int8_rows(
        "token_embd.weight",
        Role::TokenEmbedding,
        None,
        Shape::new(&[40, 128]).unwrap(),
        &emb,
    ))
    .unwrap();
    let q: Vec<i8> = (0..128 * 128).map(|i| (i % 3) as i8 - 1).collect();
    w.add_tensor(
        TensorData::ternary(
            "blk.0.attn_q.weight",
            Role::AttnQ,
            Some(0),
            Shape::new(&[128, 128]).unwrap(),
            TernaryLayout::TwoBit,
            &q,
            ScaleKind::PerTensor,
            vec![0.5],
        )
        .unwrap(),
    )
    .unwrap();
    w.to_bytes().unwrap()
}

fn inspect(path: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("inspect")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn inspect_prints_header_and_tensor_table() {
    let dir = tempdir();
    let path = dir.join("m.tern");
    std::fs::write(&path, model_bytes()).unwrap();
    let (ok, out, err) = inspect(&path);
    assert!(ok, "stderr: {err}");
    assert!(out.contains("architecture:    bitnet-b1.58"), "{out}");
    assert!(out.contains("llama3 (factor 32"), "{out}");
    assert!(out.contains("general.source = cli test"));
    assert!(
        out.lines().any(|l| l.contains("blk.0.attn_q.weight")
            && l.contains("ternary-2bit")
            && l.contains("128x128")
            && l.contains("4100")),
        "{out}"
    );
    // 128·128 weights in 4096 bytes + one 4-byte scale.
    assert!(
        out.contains("ternary:         16384 weights in 4100 bytes: 2.002 bits/weight"),
        "{out}"
    );
}

#[test]
fn inspect_fails_cleanly_on_corrupt_files() {
    let dir = tempdir();
    let good = model_bytes();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated", good[..good.len() / 2].to_vec()),
        (
            "not a model",
            b"GGUF\x03\x00\x00\x00 and then some more bytes to pass 64 bytes of header length...".to_vec(),
        ),
    ];
    let mut flipped = good.clone();
    let last = flipped.len() - 100;
    flipped[last] ^= 0x40; // inside the last tensor's data: caught by its checksum
    cases.push(("bit flip", flipped));
    let mut header = good.clone();
    header[30] ^= 1;
    cases.push(("header flip", header));
    for (what, bytes) in cases {
        let path = dir.join(format!("{}.tern", what.replace(' ', "_")));
        std::fs::write(&path, bytes).unwrap();
        let (ok, out, err) = inspect(&path);
        assert!(!ok, "{what}: should fail, printed {out}");
        assert_eq!(err.lines().count(), 1, "{what}: one line expected, got {err:?}");
        assert!(err.starts_with("error: "), "{what}: {err}");
        assert!(!err.contains("panicked") && !err.contains("backtrace"), "{what}: {err}");
    }
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tern-cli-inspect-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
