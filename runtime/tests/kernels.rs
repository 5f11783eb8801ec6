//! Each scalar kernel against a plain computation: integer kernels must match i64 sums over weights unpacked
//! by tern-format's reference exactly; float kernels must match f64 sums to f32 rounding
//! (|Δ| ≤ 1e-5 · Σ|wᵢxᵢ| + 1e-6, the bound for ≤ 1000-term f32 sums).
// Index loops mirror the formulas they check.
#![allow(clippy::needless_range_loop)]

use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tern_format::blocks::{
    int4_value, pack_ternary2_row, pack_ternary3_row, quantize_int4_row, round_half_even, unpack_ternary3_row,
    BlockTernary2, BlockTernary3,
};
use tern_format::{ElementType, ScaleKind};
use tern_runtime::kernels::{
    quantize_rows, round_up, scalar, ActQuant, Activations, Matrix, QuantizedActs, BLOCK, CHUNK, SCALAR,
};

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn close(got: f32, want: f64, mag: f64) {
    let tol = 1e-5 * mag + 1e-6;
    assert!(
        (f64::from(got) - want).abs() <= tol,
        "got {got}, want {want} (tolerance {tol:.3e})"
    );
}

#[test]
fn quantize_i8_matches_the_specification() {
    let mut r = rng(1);
    for len in [1usize, 31, 32, 96, 100, 160, 577] {
        for case in 0..4 {
            let x: Vec<f32> = match case {
                0 => (0..len).map(|_| r.gen_range(-3.0f32..3.0)).collect(),
                1 => vec![0.0; len],
                // Exact ties: absmax 127 makes s = 1, so x.5 values must round to the even neighbour.
                2 => (0..len)
                    .map(|i| if i == 0 { 127.0 } else { (i % 20) as f32 - 9.5 })
                    .collect(),
                _ => (0..len).map(|_| r.gen_range(-1e-7f32..1e-7)).collect(),
            };
            let padded = round_up(len, BLOCK);
            let mut q = vec![99i8; padded];
            let mut sums = vec![0i32; padded / CHUNK];
            let aq = scalar::quantize_i8(&x, &mut q, &mut sums);
            // Plain computation of the same definition.
            let amax = x.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
            let s = 127.0f32 / amax.max(1e-5);
            for i in 0..padded {
                let want = if i < len {
                    let v = f64::from(x[i] * s);
                    // Nearest integer, ties to the even one (f64 arithmetic, independent of the kernel).
                    let fl = v.floor();
                    let r = match (v - fl).partial_cmp(&0.5) {
                        Some(std::cmp::Ordering::Less) => fl,
                        Some(std::cmp::Ordering::Greater) => fl + 1.0,
                        _ => {
                            if fl % 2.0 == 0.0 {
                                fl
                            } else {
                                fl + 1.0
                            }
                        }
                    };
                    r.clamp(-128.0, 127.0) as i64
                } else {
                    0
                };
                assert_eq!(i64::from(q[i]), want, "len {len} case {case} index {i}");
            }
            for (c, &cs) in sums.iter().enumerate() {
                let want: i64 = q[c * CHUNK..(c + 1) * CHUNK].iter().map(|&v| i64::from(v)).sum();
                assert_eq!(i64::from(cs), want);
            }
            assert_eq!(i64::from(aq.sum), q.iter().map(|&v| i64::from(v)).sum::<i64>());
            assert_eq!(aq.d, 1.0 / s);
            if case == 2 {
                if len > 10 {
                    // s = 1 exactly: -8.5 → -8, -0.5 → 0, 0.5 → 0 (ties to even).
                    assert_eq!((q[1], q[9], q[10]), (-8, 0, 0));
                }
                assert_eq!(round_half_even(2.5), 2.0);
            }
        }
    }
}

fn random_ternary(len: usize, r: &mut ChaCha8Rng) -> Vec<i8> {
    (0..len).map(|_| r.gen_range(-1i8..=1)).collect()
}

fn random_i8(len: usize, r: &mut ChaCha8Rng) -> Vec<i8> {
    (0..len).map(|_| r.gen_range(-128i32..=127) as i8).collect()
}

#[test]
fn ternary_dots_are_exact_for_both_layouts_and_every_offset() {
    let mut r = rng(2);
    for cols in [64usize, 96, 128, 160, 576, 1000] {
        let w = random_ternary(cols, &mut r);
        let nb = cols.div_ceil(BLOCK);
        let mut b2 = vec![BlockTernary2 { qs: [0; 16] }; nb];
        let mut b3 = vec![BlockTernary3 { qs: [0; 13] }; nb];
        pack_ternary2_row(&w, &mut b2).unwrap();
        pack_ternary3_row(&w, &mut b3).unwrap();
        let padded = nb * BLOCK;
        // Codes as stored, padding included (code 1 past `cols`).
        let codes: Vec<i64> = (0..padded).map(|i| w.get(i).map_or(1, |&v| i64::from(v) + 1)).collect();
        let x = random_i8(padded, &mut r);
        for start in (0..padded).step_by(CHUNK) {
            for end in (start..=padded).step_by(CHUNK) {
                let want: i64 = (start..end).map(|i| codes[i] * i64::from(x[i - start])).sum();
                let xs = &x[..end - start];
                assert_eq!(
                    i64::from(scalar::dot_ternary2(&b2, start, xs)),
                    want,
                    "2-bit {cols} {start}..{end}"
                );
                assert_eq!(
                    i64::from(scalar::dot_ternary3(&b3, start, xs)),
                    want,
                    "base-3 {cols} {start}..{end}"
                );
            }
        }
    }
}

#[test]
fn decode_ternary3_matches_the_format_reference() {
    let mut r = rng(3);
    for _ in 0..200 {
        let w = random_ternary(64, &mut r);
        let mut b = [BlockTernary3 { qs: [0; 13] }];
        pack_ternary3_row(&w, &mut b).unwrap();
        let mut codes = [0u8; 64];
        scalar::decode_ternary3(&b[0], &mut codes);
        let mut un = [0i8; 64];
        unpack_ternary3_row(&b, &mut un);
        for i in 0..64 {
            assert_eq!(i16::from(codes[i]) - 1, i16::from(un[i]));
        }
    }
}

#[test]
fn float_dots_and_axpy_match_f64() {
    let mut r = rng(4);
    for len in [0usize, 1, 7, 8, 9, 64, 100, 577] {
        let x: Vec<f32> = (0..len).map(|_| r.gen_range(-2.0f32..2.0)).collect();
        let wf: Vec<f32> = (0..len).map(|_| r.gen_range(-2.0f32..2.0)).collect();
        let wh: Vec<f16> = wf.iter().map(|&v| f16::from_f32(v)).collect();
        let wi = random_i8(len, &mut r);
        let mut w4 = vec![0u8; len.div_ceil(2)];
        let mut s4 = vec![0f32; len.div_ceil(32).max(1)];
        quantize_int4_row(&wf, 32, &mut w4, &mut s4[..len.div_ceil(32)]);

        let f64dot = |w: &dyn Fn(usize) -> f64| -> (f64, f64) {
            let mut acc = 0.0;
            let mut mag = 0.0;
            for i in 0..len {
                acc += w(i) * f64::from(x[i]);
                mag += (w(i) * f64::from(x[i])).abs();
            }
            (acc, mag)
        };
        let (want, mag) = f64dot(&|i| f64::from(wf[i]));
        close(scalar::dot_f32(&wf, &x), want, mag);
        let (want, mag) = f64dot(&|i| f64::from(wh[i].to_f32()));
        close(scalar::dot_f16(&wh, &x), want, mag);
        let (want, mag) = f64dot(&|i| f64::from(wi[i]));
        close(scalar::dot_int8(&wi, &x), want, mag);
        let (want, mag) = f64dot(&|i| f64::from(int4_value(&w4, i)));
        close(scalar::dot_int4(&w4, &x), want, mag);

        let a = 0.37f32;
        let y0: Vec<f32> = (0..len).map(|_| r.gen_range(-1.0f32..1.0)).collect();
        let mut y = y0.clone();
        scalar::axpy_f32(a, &wf, &mut y);
        for i in 0..len {
            close(y[i], f64::from(y0[i]) + f64::from(a) * f64::from(wf[i]), 2.0);
        }
        let mut y = y0.clone();
        scalar::axpy_f16(a, &wh, &mut y);
        for i in 0..len {
            close(y[i], f64::from(y0[i]) + f64::from(a) * f64::from(wh[i].to_f32()), 2.0);
        }
    }
}

/// `matmul_generic` on every element type and scale granularity against f64 sums of unpacked weights.
#[test]
fn matmul_matches_f64_for_every_type_and_granularity() {
    let mut r = rng(5);
    let (rows, cols, n) = (37usize, 160usize, 3usize);
    let x: Vec<f32> = (0..n * cols).map(|_| r.gen_range(-2.0f32..2.0)).collect();
    let stride = round_up(cols, BLOCK);
    let mut q = vec![0i8; n * stride];
    let mut cs = vec![0i32; n * stride / CHUNK];
    let mut quant = vec![ActQuant { d: 0.0, sum: 0 }; n];
    quantize_rows(&SCALAR, &x, cols, n, stride, &mut q, &mut cs, &mut quant);
    let acts = Activations {
        x: &x,
        cols,
        quantized: Some(QuantizedActs {
            q: &q,
            stride,
            chunk_sums: &cs,
            quant: &quant,
        }),
    };

    let w = random_ternary(rows * cols, &mut r);
    for layout in [ElementType::Ternary2, ElementType::Ternary3] {
        for scale in [
            ScaleKind::PerTensor,
            ScaleKind::PerRow,
            ScaleKind::PerGroup(32),
            ScaleKind::PerGroup(64),
            ScaleKind::PerGroup(96),
        ] {
            let ns = scale.count(rows as u64, cols as u64).unwrap() as usize;
            let scales: Vec<f32> = (0..ns).map(|_| r.gen_range(0.01f32..0.2)).collect();
            let nb = cols.div_ceil(BLOCK);
            let data: Vec<u8> = if layout == ElementType::Ternary2 {
                let mut b = vec![BlockTernary2 { qs: [0; 16] }; rows * nb];
                for (row, out) in w.chunks(cols).zip(b.chunks_mut(nb)) {
                    pack_ternary2_row(row, out).unwrap();
                }
                bytemuck::cast_slice(&b).to_vec()
            } else {
                let mut b = vec![BlockTernary3 { qs: [0; 13] }; rows * nb];
                for (row, out) in w.chunks(cols).zip(b.chunks_mut(nb)) {
                    pack_ternary3_row(row, out).unwrap();
                }
                bytemuck::cast_slice(&b).to_vec()
            };
            let m = Matrix {
                dtype: layout,
                scale,
                rows,
                cols,
                row_bytes: layout.row_bytes(cols as u64).unwrap() as usize,
                data: &data,
                scales: &scales,
            };
            let mut out = vec![0f32; n * rows];
            (SCALAR.matmul)(&SCALAR, &m, &acts, 0..n, 0..rows, &mut out);
            for t in 0..n {
                let xq = &q[t * stride..t * stride + cols];
                for row in 0..rows {
                    let mut acc = 0.0f64;
                    let mut mag = 0.0f64;
                    for c in 0..cols {
                        let s = match scale {
                            ScaleKind::PerTensor => scales[0],
                            ScaleKind::PerRow => scales[row],
                            ScaleKind::PerGroup(g) => scales[row * cols.div_ceil(g as usize) + c / g as usize],
                            ScaleKind::None => unreachable!(),
                        };
                        let v = f64::from(w[row * cols + c]) * f64::from(xq[c]) * f64::from(s);
                        acc += v;
                        mag += v.abs();
                    }
                    let d = f64::from(quant[t].d);
                    close(out[t * rows + row], acc * d, mag * d);
                }
            }
        }
    }

    // Dense types: sub-ranges of rows and tokens, as threads call it.
    let wf: Vec<f32> = (0..rows * cols).map(|_| r.gen_range(-1.0f32..1.0)).collect();
    let i8_data = {
        let mut d = vec![0i8; rows * cols];
        let s: Vec<f32> = wf
            .chunks(cols)
            .zip(d.chunks_mut(cols))
            .map(|(a, b)| tern_format::blocks::quantize_int8_row(a, b))
            .collect();
        (bytemuck::cast_slice::<i8, u8>(&d).to_vec(), s)
    };
    let i4_data = {
        let mut d = vec![0u8; rows * cols / 2];
        let mut s = vec![0f32; rows * cols / 32];
        for ((a, b), c) in wf.chunks(cols).zip(d.chunks_mut(cols / 2)).zip(s.chunks_mut(cols / 32)) {
            quantize_int4_row(a, 32, b, c);
        }
        (d, s)
    };
    let f16_data: Vec<u8> = wf.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
    let f32_data: Vec<u8> = bytemuck::cast_slice(&wf).to_vec();
    let cases: [(ElementType, ScaleKind, &[u8], &[f32]); 4] = [
        (ElementType::Int8, ScaleKind::PerRow, &i8_data.0, &i8_data.1),
        (ElementType::Int4, ScaleKind::PerGroup(32), &i4_data.0, &i4_data.1),
        (ElementType::F16, ScaleKind::None, &f16_data, &[]),
        (ElementType::F32, ScaleKind::None, &f32_data, &[]),
    ];
    for (dtype, scale, data, scales) in cases {
        let m = Matrix {
            dtype,
            scale,
            rows,
            cols,
            row_bytes: dtype.row_bytes(cols as u64).unwrap() as usize,
            data,
            scales,
        };
        let (rr, tt) = (5..29usize, 1..3usize);
        let mut out = vec![0f32; rr.len() * tt.len()];
        (SCALAR.matmul)(&SCALAR, &m, &acts, tt.clone(), rr.clone(), &mut out);
        for (ti, t) in tt.clone().enumerate() {
            for (ri, row) in rr.clone().enumerate() {
                let rb = m.row_bytes;
                let rowb = &data[row * rb..(row + 1) * rb];
                let mut acc = 0.0f64;
                let mut mag = 0.0f64;
                for c in 0..cols {
                    let wv = match dtype {
                        ElementType::Int8 => f64::from(rowb[c] as i8) * f64::from(scales[row]),
                        ElementType::Int4 => {
                            f64::from(int4_value(rowb, c)) * f64::from(scales[row * cols / 32 + c / 32])
                        }
                        ElementType::F16 => f64::from(f16::from_le_bytes([rowb[2 * c], rowb[2 * c + 1]]).to_f32()),
                        _ => f64::from(wf[row * cols + c]),
                    };
                    let v = wv * f64::from(x[t * cols + c]);
                    acc += v;
                    mag += v.abs();
                }
                close(out[ti * rr.len() + ri], acc, mag);
            }
        }
    }
}

#[test]
fn f16_conversion_is_exact_for_every_value() {
    for bits in 0..=u16::MAX {
        let h = f16::from_bits(bits);
        let (got, want) = (scalar::f16_to_f32(h), h.to_f32());
        if want.is_nan() {
            assert!(got.is_nan(), "{bits:#06x}");
        } else {
            assert_eq!(got.to_bits(), want.to_bits(), "{bits:#06x}");
        }
    }
}
