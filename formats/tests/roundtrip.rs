//! Round trips of every element type and scale granularity through the writer and parser, on random shapes
//! (including rows that are not multiples of the 64-weight block), checked against independent computations.
#![allow(clippy::needless_range_loop)] // index loops mirror the row/column math being checked

mod common;

use proptest::prelude::*;
use tern_format::blocks::{int4_value, ternary2_code, ternary3_code, BlockTernary2, BlockTernary3};
use tern_format::{AlignedBytes, ElementType, ModelView, Role, ScaleKind, Shape, TensorData, TernaryLayout};

fn unpack_ternary(t: &tern_format::TensorView<'_>) -> Vec<i8> {
    let cols = t.shape.cols() as usize;
    let row_bytes = t.row_bytes();
    let mut out = Vec::new();
    for row in t.data.chunks(row_bytes) {
        for i in 0..cols {
            let c = match t.dtype {
                ElementType::Ternary2 => {
                    let blocks: &[BlockTernary2] = bytemuck::cast_slice(row);
                    ternary2_code(&blocks[i / 64], i % 64)
                }
                ElementType::Ternary3 => {
                    let blocks: &[BlockTernary3] = bytemuck::cast_slice(row);
                    ternary3_code(&blocks[i / 64], i % 64)
                }
                _ => unreachable!(),
            };
            out.push(c as i8 - 1);
        }
    }
    out
}

fn write_one(t: TensorData) -> AlignedBytes {
    let mut w = tern_format::ModelWriter::new(common::tiny_config());
    w.add_tensor(t).unwrap();
    AlignedBytes::from_slice(&w.to_bytes().unwrap())
}

fn scale_kind() -> impl Strategy<Value = ScaleKind> {
    prop_oneof![
        Just(ScaleKind::PerTensor),
        Just(ScaleKind::PerRow),
        (1u32..5).prop_map(|g| ScaleKind::PerGroup(32 * g)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn ternary_round_trip(rows in 1usize..6, cols in 1usize..300, seed in any::<u64>(), base3 in any::<bool>(),
                          scale in scale_kind()) {
        let mut s = seed;
        let weights: Vec<i8> = (0..rows * cols).map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % 3) as i8 - 1
        }).collect();
        let n_scales = scale.count(rows as u64, cols as u64).unwrap() as usize;
        let scales: Vec<f32> = (0..n_scales).map(|i| 0.5 + i as f32).collect();
        let layout = if base3 { TernaryLayout::Base3 } else { TernaryLayout::TwoBit };
        let shape = Shape::new(&[rows as u64, cols as u64]).unwrap();
        let t = TensorData::ternary("w", Role::Other, None, shape, layout, &weights, scale, scales.clone()).unwrap();
        let bytes = write_one(t);
        let view = ModelView::parse(&bytes).unwrap();
        let tv = view.find("w").unwrap();
        prop_assert_eq!(tv.scale, scale);
        prop_assert_eq!(tv.scales, &scales[..]);
        prop_assert_eq!(unpack_ternary(&tv), weights);
        // Padding slots must decode as zero weights so kernels may read whole blocks.
        let blocks_per_row = cols.div_ceil(64);
        for r in 0..rows {
            for i in cols..blocks_per_row * 64 {
                let row = &tv.data[r * tv.row_bytes()..(r + 1) * tv.row_bytes()];
                let c = if base3 { ternary3_code(&bytemuck::cast_slice::<_, BlockTernary3>(row)[i / 64], i % 64) }
                        else { ternary2_code(&bytemuck::cast_slice::<_, BlockTernary2>(row)[i / 64], i % 64) };
                prop_assert_eq!(c, 1);
            }
        }
    }

    #[test]
    fn int8_round_trip(rows in 1usize..6, cols in 1usize..300, seed in any::<u64>()) {
        let values = random_f32(rows * cols, seed);
        let shape = Shape::new(&[rows as u64, cols as u64]).unwrap();
        let bytes = write_one(TensorData::int8_rows("e", Role::Other, None, shape, &values));
        let view = ModelView::parse(&bytes).unwrap();
        let t = view.find("e").unwrap();
        for r in 0..rows {
            let row = &values[r * cols..(r + 1) * cols];
            let amax = row.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
            prop_assert!((t.scales[r] as f64 - amax / 127.0).abs() <= 1e-6 * amax.max(1e-30));
            for c in 0..cols {
                let q = t.data[r * cols + c] as i8 as f64;
                // Round-to-nearest: error at most half a step (plus f32 slack).
                prop_assert!((q * t.scales[r] as f64 - row[c] as f64).abs() <= 0.5001 * t.scales[r] as f64 + 1e-7);
            }
        }
    }

    #[test]
    fn int4_round_trip(rows in 1usize..5, cols in 1usize..200, g in 1u32..4, seed in any::<u64>()) {
        let group = 32 * g;
        let values = random_f32(rows * cols, seed);
        let shape = Shape::new(&[rows as u64, cols as u64]).unwrap();
        let bytes = write_one(TensorData::int4_groups("h", Role::Other, None, shape, group, &values));
        let view = ModelView::parse(&bytes).unwrap();
        let t = view.find("h").unwrap();
        let groups = cols.div_ceil(group as usize);
        prop_assert_eq!(t.scales.len(), rows * groups);
        for r in 0..rows {
            let row_bytes = &t.data[r * cols.div_ceil(2)..(r + 1) * cols.div_ceil(2)];
            for c in 0..cols {
                let s = t.scales[r * groups + c / group as usize] as f64;
                let v = int4_value(row_bytes, c) as f64 * s;
                prop_assert!((v - values[r * cols + c] as f64).abs() <= 0.5001 * s + 1e-7);
            }
        }
    }

    #[test]
    fn float_round_trip(dims in proptest::collection::vec(1u64..7, 1..5), seed in any::<u64>(), half in any::<bool>()) {
        let n: u64 = dims.iter().product();
        let values = random_f32(n as usize, seed);
        let shape = Shape::new(&dims).unwrap();
        let t = if half { TensorData::f16("f", Role::Other, None, shape, &values) }
                else { TensorData::f32("f", Role::Other, None, shape, &values) };
        let bytes = write_one(t);
        let view = ModelView::parse(&bytes).unwrap();
        let t = view.find("f").unwrap();
        prop_assert_eq!(t.shape.dims(), &dims[..]);
        for (i, &v) in values.iter().enumerate() {
            let got = if half {
                half::f16::from_le_bytes([t.data[2 * i], t.data[2 * i + 1]]).to_f32()
            } else {
                f32::from_le_bytes(t.data[4 * i..4 * i + 4].try_into().unwrap())
            };
            let want = if half { half::f16::from_f32(v).to_f32() } else { v };
            prop_assert_eq!(got.to_bits(), want.to_bits());
        }
    }
}

fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
        })
        .collect()
}

/// Every code at every position of both block types decodes back (exhaustive over the base-3 byte values).
#[test]
fn block_codes_exhaustive() {
    for pos in 0..64 {
        for w in -1i8..=1 {
            let mut row = [0i8; 64];
            row[pos] = w;
            let mut b2 = [BlockTernary2 { qs: [0; 16] }];
            tern_format::blocks::pack_ternary2_row(&row, &mut b2).unwrap();
            let mut b3 = [BlockTernary3 { qs: [0; 13] }];
            tern_format::blocks::pack_ternary3_row(&row, &mut b3).unwrap();
            for i in 0..64 {
                let want = if i == pos { w + 1 } else { 1 };
                assert_eq!(ternary2_code(&b2[0], i) as i8, want);
                assert_eq!(ternary3_code(&b3[0], i) as i8, want);
            }
        }
    }
    // Every 5-trit value: pack the trits at positions j, j+13, …, j+52 and read them back.
    for v in 0..243u32 {
        let trits: Vec<i8> = (0..5).map(|k| ((v / 3u32.pow(4 - k)) % 3) as i8 - 1).collect();
        let mut row = [0i8; 64];
        for (k, &t) in trits.iter().enumerate() {
            if 13 * k < 64 {
                row[13 * k] = t;
            }
        }
        let mut b3 = [BlockTernary3 { qs: [0; 13] }];
        tern_format::blocks::pack_ternary3_row(&row, &mut b3).unwrap();
        for (k, &t) in trits.iter().enumerate() {
            assert_eq!(ternary3_code(&b3[0], 13 * k) as i8 - 1, t, "value {v} trit {k}");
        }
    }
}

#[test]
fn packer_rejects_non_ternary() {
    let mut b = [BlockTernary2 { qs: [0; 16] }];
    let e = tern_format::blocks::pack_ternary2_row(&[0, 1, 2], &mut b).unwrap_err();
    assert_eq!((e.index, e.value), (2, 2));
}

#[test]
fn round_half_even_matches_std() {
    let mut x = -300.0f32;
    while x <= 300.0 {
        for v in [x, x + 0.5, x - 0.5, x + 0.49999997, x + 0.50000006] {
            let got = tern_format::blocks::round_half_even(v);
            assert_eq!(got, v.round_ties_even(), "{v}");
        }
        x += 0.25;
    }
    for v in [1e9f32, -1e9, 8388607.5, -8388607.5, 0.5, -0.5, 1.5, 2.5] {
        assert_eq!(tern_format::blocks::round_half_even(v), v.round_ties_even(), "{v}");
    }
    assert!(tern_format::blocks::round_half_even(f32::NAN).is_nan());
}
