//! Thousands of random mutations of a valid file — byte flips, truncations, grown lengths, huge counts,
//! overlapping offsets — must each give `Ok` or a typed error: never a panic, never an out-of-bounds read.
//!
//! Checksums would reject almost every mutation at the first section, so most cases re-seal the header and
//! section checksums after mutating: that drives the mutation through to the structural checks behind them.

mod common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tern_format::{AlignedBytes, FormatError, ModelView, ParseOptions};

fn mutate(rng: &mut ChaCha8Rng, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    let interesting: [u64; 8] = [0, 1, 63, 64, u32::MAX as u64, u64::MAX, 1 << 40, base.len() as u64];
    for _ in 0..rng.gen_range(1..4) {
        match rng.gen_range(0..6) {
            0 => {
                let i = rng.gen_range(0..b.len());
                b[i] ^= 1 << rng.gen_range(0..8);
            }
            1 => {
                let n = rng.gen_range(0..b.len());
                b.truncate(n);
            }
            2 if b.len() >= 8 => {
                // Overwrite an aligned word (count, length, offset or dimension) with an interesting value.
                let i = rng.gen_range(0..b.len() / 4 - 1) * 4;
                let v = interesting[rng.gen_range(0..interesting.len())];
                let w = 4 * rng.gen_range(1..3);
                let end = (i + w).min(b.len());
                b[i..end].copy_from_slice(&v.to_le_bytes()[..end - i]);
            }
            3 => {
                let extra = rng.gen_range(1..200);
                b.extend((0..extra).map(|_| rng.gen::<u8>()));
            }
            4 if b.len() > 64 => {
                // Copy one region over another (duplicated entries, overlapping offsets).
                let len = rng.gen_range(1..64).min(b.len() / 2);
                let src = rng.gen_range(0..b.len() - len);
                let dst = rng.gen_range(0..b.len() - len);
                b.copy_within(src..src + len, dst);
            }
            _ => {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen();
            }
        }
        if b.is_empty() {
            break;
        }
    }
    if rng.gen_bool(0.8) {
        common::reseal(&mut b);
        // Keep the recorded file size honest half the time so truncations reach the inner checks.
        if b.len() >= 24 && rng.gen_bool(0.5) {
            let n = b.len() as u64;
            b[16..24].copy_from_slice(&n.to_le_bytes());
            common::reseal(&mut b);
        }
    }
    b
}

fn exercise(view: &ModelView<'_>) {
    // Touch everything a consumer would read.
    let _ = view.config().q_dim();
    for t in view.tensors() {
        let _ = (t.data.first(), t.scales.last(), t.row_bytes());
    }
    let _ = view.metadata().count();
    let _ = view.tokenizer().map(|t| t.bytes.len());
}

#[test]
fn random_mutations_never_panic() {
    let base = common::tiny_writer().to_bytes().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0x7e2a);
    let (mut ok, mut errors) = (0, std::collections::BTreeMap::<String, usize>::new());
    for _ in 0..6000 {
        let m = AlignedBytes::from_slice(&mutate(&mut rng, &base));
        for verify in [true, false] {
            match ModelView::parse_with(
                &m,
                ParseOptions {
                    verify_tensor_checksums: verify,
                },
            ) {
                Ok(v) => {
                    exercise(&v);
                    ok += 1;
                }
                Err(e) => {
                    let key = format!("{e:?}");
                    let key = key.split(['(', '{', ' ']).next().unwrap_or("").to_string();
                    *errors.entry(key).or_default() += 1;
                }
            }
        }
    }
    eprintln!("ok: {ok}, errors by kind: {errors:?}");
    // The mutations must reach deep checks, not just the magic and checksums.
    for kind in [
        "Truncated",
        "FileSizeMismatch",
        "BadTensor",
        "SectionOutOfBounds",
        "TensorChecksum",
    ] {
        assert!(errors.contains_key(kind), "no mutation produced {kind}: {errors:?}");
    }
}

#[test]
fn every_truncation_is_a_typed_error() {
    let base = common::tiny_writer().to_bytes().unwrap();
    for n in 0..base.len() {
        let b = AlignedBytes::from_slice(&base[..n]);
        let e = ModelView::parse(&b).unwrap_err();
        assert!(
            matches!(e, FormatError::Truncated | FormatError::FileSizeMismatch { .. }),
            "truncated to {n}: {e:?}"
        );
    }
}

#[test]
fn misaligned_buffer_is_rejected_not_read() {
    let base = common::tiny_writer().to_bytes().unwrap();
    let mut shifted = AlignedBytes::from_slice(&[&[0u8][..], &base].concat());
    let b = &mut shifted[1..];
    assert_eq!(ModelView::parse(b).unwrap_err(), FormatError::Misaligned);
}
