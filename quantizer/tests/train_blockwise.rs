//! The block-wise stage on a tiny Llama: each block's held-out MSE falls below its PTQ value (both input modes,
//! STE and Hestia), a run interrupted inside a block resumes bit for bit (in the same block, from the moments
//! checkpointed there), cached teacher activations are reused and damaged ones are refused.

use std::path::{Path, PathBuf};

use tern_quantizer::data::{tokenize_text, PackedData};
use tern_quantizer::engine::{CpuBackend, SplitMix64, WeightQuantizer};
use tern_quantizer::qat::blockwise::{train_blockwise, BlockInputs, BlockwiseConfig, BlockwiseEvent};
use tern_quantizer::qat::hestia::HestiaOptions;
use tern_quantizer::tiny::{tiny_random_model, TINY_EOS};
use tern_quantizer::train::{DebugOptions, TrainError};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-blockwise-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(seed: u64, sentences: usize) -> String {
    const WORDS: [&str; 12] = [
        "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "red", "blue",
    ];
    let mut rng = SplitMix64::new(seed);
    let mut out = String::new();
    for s in 0..sentences {
        let n = 4 + rng.below(5) as usize;
        let words: Vec<&str> = (0..n).map(|_| WORDS[rng.below(12) as usize]).collect();
        out.push_str(&words.join(" "));
        out.push_str(".\n");
        if s % 8 == 7 {
            out.push('\n');
        }
    }
    out
}

fn data() -> PackedData {
    let src = tiny_random_model(1);
    let tok = tern_quantizer::data::load_tokenizer(&src.tokenizer_json).unwrap();
    let stream = tokenize_text(&tok, &text(5, 300), Some(TINY_EOS), Path::new("t")).unwrap();
    PackedData::split(&stream, 16, 0.1).unwrap()
}

fn config(inputs: BlockInputs, quantizer: WeightQuantizer) -> BlockwiseConfig {
    BlockwiseConfig {
        steps_per_block: 12,
        batch_size: 4,
        windows: 32,
        eval_windows: 6,
        lr: 3e-3,
        min_lr: 3e-4,
        warmup_steps: 2,
        inputs,
        quantizer,
        hestia: (quantizer == WeightQuantizer::Soft).then(HestiaOptions::default),
        checkpoint_every: 5,
        ..BlockwiseConfig::default()
    }
}

#[test]
fn every_block_lowers_its_own_loss_in_both_input_modes() {
    let src = tiny_random_model(1);
    let data = data();
    for (inputs, quantizer) in [
        (BlockInputs::FullPrecision, WeightQuantizer::Ste),
        (BlockInputs::Quantized, WeightQuantizer::Ste),
        (BlockInputs::Quantized, WeightQuantizer::Soft),
    ] {
        let dir = temp_dir(&format!("{inputs:?}-{quantizer:?}"));
        let cfg = config(inputs, quantizer);
        let mut activation_events = 0;
        let out = train_blockwise(
            &CpuBackend::<f32>::new(),
            &src,
            &data,
            &cfg,
            None,
            None,
            &dir,
            false,
            &DebugOptions::default(),
            &mut |e| {
                if let BlockwiseEvent::Activations { .. } = e {
                    activation_events += 1
                }
            },
        )
        .unwrap();
        assert!(activation_events > 0);
        assert_eq!(out.reports.len(), 2);
        for r in &out.reports {
            eprintln!(
                "{inputs:?} {quantizer:?}: block {} MSE {:.3e} → {:.3e}",
                r.layer, r.loss_before, r.loss_after
            );
            assert!(r.loss_before > 0.0 && r.loss_after < 0.8 * r.loss_before, "{r:?}");
        }
        // The weights outside the blocks are the source model's, untouched.
        let emb = src.tensor_by_name("token_embd.weight").unwrap();
        assert_eq!(out.latent[out.layout.embedding.0], emb.data);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn an_interrupted_block_resumes_bit_for_bit() {
    let src = tiny_random_model(1);
    let data = data();
    let cfg = config(BlockInputs::Quantized, WeightQuantizer::Soft);
    let be = CpuBackend::<f32>::new();
    let full_dir = temp_dir("full");
    let full = train_blockwise(
        &be,
        &src,
        &data,
        &cfg,
        None,
        None,
        &full_dir,
        false,
        &DebugOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    // Stop inside block 1 (global steps 13..24; checkpoints every 5 steps within a block: step 12 + 5 = 17).
    let part_dir = temp_dir("part");
    let stop = DebugOptions {
        stop_after_step: Some(17),
        ..DebugOptions::default()
    };
    let err = train_blockwise(&be, &src, &data, &cfg, None, None, &part_dir, false, &stop, &mut |_| {});
    assert!(
        matches!(err, Err(TrainError::Interrupted { step: 17 })),
        "{:?}",
        err.err()
    );
    let mut started = Vec::new();
    let resumed = train_blockwise(
        &be,
        &src,
        &data,
        &cfg,
        None,
        None,
        &part_dir,
        true,
        &DebugOptions::default(),
        &mut |e| {
            if let BlockwiseEvent::BlockStarted { layer, first_step, .. } = e {
                started.push((layer, first_step))
            }
        },
    )
    .unwrap();
    assert_eq!(started, vec![(1, 5)], "resumes inside block 1 at its step 5");
    let bits = |v: &[Vec<f32>]| {
        v.iter()
            .map(|t| t.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    assert!(bits(&resumed.latent) == bits(&full.latent), "resumed weights differ");
    assert_eq!(resumed.reports.len(), 2);
    // Settings that change the weights are refused on resume.
    let other = BlockwiseConfig {
        lr: 1e-2,
        ..cfg.clone()
    };
    assert!(matches!(
        train_blockwise(
            &be,
            &src,
            &data,
            &other,
            None,
            None,
            &part_dir,
            true,
            &DebugOptions::default(),
            &mut |_| {}
        ),
        Err(TrainError::ResumeMismatch { .. })
    ));
    // A damaged activation file is an error, not silently reused.
    let acts = part_dir.join("activations").join("train-state-01.f16");
    let mut bytes = std::fs::read(&acts).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x40;
    std::fs::write(&acts, &bytes).unwrap();
    let dir3 = temp_dir("damaged");
    std::fs::create_dir_all(dir3.join("activations")).unwrap();
    std::fs::copy(&acts, dir3.join("activations").join("train-state-01.f16")).unwrap();
    for l in [0, 2] {
        let name = format!("train-state-{l:02}.f16");
        std::fs::copy(
            part_dir.join("activations").join(&name),
            dir3.join("activations").join(&name),
        )
        .unwrap();
    }
    assert!(train_blockwise(
        &be,
        &src,
        &data,
        &cfg,
        None,
        None,
        &dir3,
        false,
        &DebugOptions::default(),
        &mut |_| {}
    )
    .is_err());
    for d in [full_dir, part_dir, dir3] {
        std::fs::remove_dir_all(&d).unwrap();
    }
}
