//! The kernels, table by table.
//!
//! - The scalar reference against plain computations: integer dots against i64 sums over weights unpacked by
//!   tern-format's reference (exact), float kernels against f64 sums (to f32 rounding:
//!   |Δ| ≤ 1e-5 · Σ|wᵢxᵢ| + 1e-6, the bound for ≤ 1000-term f32 sums), every matrix type and scale granularity
//!   against f64 sums of the unpacked weights.
//! - Every other table this CPU can run (`kernels::available()`) against the scalar one on random inputs of
//!   ragged sizes: bit for bit for activation quantization and for the int8-activation matrices (ternary
//!   2-bit and base-3, int8, int4, every granularity, matrix-vector and tile entries, any row and token
//!   range), to f32 rounding for the float kernels. Tables built for this target but not runnable on this
//!   CPU are named on stderr as skipped.
// Index loops mirror the formulas they check.
#![allow(clippy::needless_range_loop)]

use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tern_format::blocks::{
    int4_value, pack_ternary2_row, pack_ternary3_row, quantize_int4_row, quantize_int8_row, round_half_even,
    unpack_ternary3_row, BlockTernary2, BlockTernary3,
};
use tern_format::{ElementType, ScaleKind};
use tern_runtime::kernels::{
    self, matmul, quantize_rows, round_up, scalar, ActFormat, ActQuant, Activations, Kernels, Matrix, QuantizedActs,
    BLOCK, CHUNK, SCALAR,
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

/// The tables other than the reference, with a note of those this CPU lacks.
fn simd_tables() -> Vec<&'static Kernels> {
    let have: Vec<&str> = kernels::available().iter().map(|k| k.name).collect();
    for name in kernels::TABLE_NAMES {
        if !have.contains(name) {
            eprintln!("skipping the {name} table: this CPU lacks its instructions");
        }
    }
    kernels::available()
        .iter()
        .copied()
        .filter(|k| k.name != "scalar")
        .collect()
}

fn random_ternary(len: usize, r: &mut ChaCha8Rng) -> Vec<i8> {
    (0..len).map(|_| r.gen_range(-1i8..=1)).collect()
}

fn random_i8(len: usize, r: &mut ChaCha8Rng) -> Vec<i8> {
    (0..len).map(|_| r.gen_range(-128i32..=127) as i8).collect()
}

/// The specification of `quantize_i8`, computed independently (f64 rounding to the even neighbour).
fn check_quantize_spec(x: &[f32], q: &[i8], sums: &[i32], aq: ActQuant, what: &str) {
    let amax = x.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    let s = 127.0f32 / amax.max(1e-5);
    for i in 0..q.len() {
        let want = if i < x.len() {
            let v = f64::from(x[i] * s);
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
        assert_eq!(i64::from(q[i]), want, "{what}: index {i}");
    }
    for (c, &cs) in sums.iter().enumerate() {
        let want: i64 = q[c * CHUNK..(c + 1) * CHUNK].iter().map(|&v| i64::from(v)).sum();
        assert_eq!(i64::from(cs), want, "{what}: chunk {c}");
    }
    assert_eq!(
        i64::from(aq.sum),
        q.iter().map(|&v| i64::from(v)).sum::<i64>(),
        "{what}"
    );
    assert_eq!(aq.d, 1.0 / s, "{what}");
}

#[test]
fn quantize_i8_matches_the_specification_in_every_table() {
    let mut r = rng(1);
    for k in kernels::available() {
        for len in [1usize, 31, 32, 33, 96, 100, 160, 577, 2560] {
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
                let aq = (k.quantize_i8)(&x, &mut q, &mut sums);
                check_quantize_spec(&x, &q, &sums, aq, &format!("{} len {len} case {case}", k.name));
                if case == 2 && len > 10 {
                    // s = 1 exactly: -8.5 → -8, -0.5 → 0, 0.5 → 0 (ties to even).
                    assert_eq!((q[1], q[9], q[10]), (-8, 0, 0));
                }
            }
        }
    }
    assert_eq!(round_half_even(2.5), 2.0);
}

#[test]
fn scalar_ternary_dots_are_exact_for_both_layouts_and_every_offset() {
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
fn scalar_int8_and_int4_dots_are_exact() {
    let mut r = rng(6);
    for len in [0usize, 1, 31, 64, 577] {
        let w = random_i8(len, &mut r);
        let q = random_i8(len, &mut r);
        let want: i64 = w.iter().zip(&q).map(|(&a, &b)| i64::from(a) * i64::from(b)).sum();
        assert_eq!(i64::from(scalar::dot_i8(&w, &q)), want);
        let nib: Vec<u8> = (0..len.div_ceil(2)).map(|_| r.gen()).collect();
        for start in [0usize, 2, 32] {
            let n = len.saturating_sub(start);
            let want: i64 = (0..n)
                .map(|i| (i64::from(int4_value(&nib, start + i)) + 8) * i64::from(q[i]))
                .sum();
            assert_eq!(
                i64::from(scalar::dot_u4(&nib, start, &q[..n])),
                want,
                "len {len} start {start}"
            );
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
fn attention_dots_and_axpy_match_f64_in_every_table() {
    let mut r = rng(4);
    for k in kernels::available() {
        for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 33, 64, 100, 128, 577] {
            let x: Vec<f32> = (0..len).map(|_| r.gen_range(-2.0f32..2.0)).collect();
            let wf: Vec<f32> = (0..len).map(|_| r.gen_range(-2.0f32..2.0)).collect();
            let wh: Vec<f16> = wf.iter().map(|&v| f16::from_f32(v)).collect();
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
            close((k.dot_f32)(&wf, &x), want, mag);
            let (want, mag) = f64dot(&|i| f64::from(wh[i].to_f32()));
            close((k.dot_f16)(&wh, &x), want, mag);

            let a = 0.37f32;
            let y0: Vec<f32> = (0..len).map(|_| r.gen_range(-1.0f32..1.0)).collect();
            let mut y = y0.clone();
            (k.axpy_f32)(a, &wf, &mut y);
            for i in 0..len {
                close(y[i], f64::from(y0[i]) + f64::from(a) * f64::from(wf[i]), 2.0);
            }
            let mut y = y0.clone();
            (k.axpy_f16)(a, &wh, &mut y);
            for i in 0..len {
                close(y[i], f64::from(y0[i]) + f64::from(a) * f64::from(wh[i].to_f32()), 2.0);
            }
        }
    }
}

/// A random matrix of one element type and granularity, with its weights unpacked to f64 (scales applied).
struct TestMatrix {
    dtype: ElementType,
    scale: ScaleKind,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
    scales: Vec<f32>,
    /// `[row][col]` values.
    values: Vec<f64>,
}

impl TestMatrix {
    fn view(&self) -> Matrix<'_> {
        Matrix {
            dtype: self.dtype,
            scale: self.scale,
            rows: self.rows,
            cols: self.cols,
            row_bytes: self.dtype.row_bytes(self.cols as u64).unwrap() as usize,
            data: &self.data,
            scales: &self.scales,
        }
    }

    fn new(dtype: ElementType, scale: ScaleKind, rows: usize, cols: usize, r: &mut ChaCha8Rng) -> Self {
        let ns = scale.count(rows as u64, cols as u64).unwrap() as usize;
        let scale_of = |scales: &[f32], row: usize, c: usize| match scale {
            ScaleKind::PerTensor => scales[0],
            ScaleKind::PerRow => scales[row],
            ScaleKind::PerGroup(g) => scales[row * cols.div_ceil(g as usize) + c / g as usize],
            ScaleKind::None => 1.0,
        };
        let mut values = vec![0f64; rows * cols];
        let (data, scales) = match dtype {
            ElementType::Ternary2 | ElementType::Ternary3 => {
                let w = random_ternary(rows * cols, r);
                let scales: Vec<f32> = (0..ns).map(|_| r.gen_range(0.01f32..0.2)).collect();
                let nb = cols.div_ceil(BLOCK);
                let data: Vec<u8> = if dtype == ElementType::Ternary2 {
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
                for row in 0..rows {
                    for c in 0..cols {
                        values[row * cols + c] = f64::from(w[row * cols + c]) * f64::from(scale_of(&scales, row, c));
                    }
                }
                (data, scales)
            }
            _ => {
                let wf: Vec<f32> = (0..rows * cols).map(|_| r.gen_range(-1.0f32..1.0)).collect();
                match dtype {
                    ElementType::Int8 => {
                        let mut d = vec![0i8; rows * cols];
                        let s: Vec<f32> = wf
                            .chunks(cols)
                            .zip(d.chunks_mut(cols))
                            .map(|(a, b)| quantize_int8_row(a, b))
                            .collect();
                        for i in 0..rows * cols {
                            values[i] = f64::from(d[i]) * f64::from(s[i / cols]);
                        }
                        (bytemuck::cast_slice::<i8, u8>(&d).to_vec(), s)
                    }
                    ElementType::Int4 => {
                        let ScaleKind::PerGroup(g) = scale else { unreachable!() };
                        let (rb, ng) = (cols.div_ceil(2), cols.div_ceil(g as usize));
                        let mut d = vec![0u8; rows * rb];
                        let mut s = vec![0f32; rows * ng];
                        for ((a, b), c) in wf.chunks(cols).zip(d.chunks_mut(rb)).zip(s.chunks_mut(ng)) {
                            quantize_int4_row(a, g as usize, b, c);
                        }
                        for row in 0..rows {
                            for c in 0..cols {
                                values[row * cols + c] = f64::from(int4_value(&d[row * rb..(row + 1) * rb], c))
                                    * f64::from(scale_of(&s, row, c));
                            }
                        }
                        (d, s)
                    }
                    ElementType::F16 => {
                        let d: Vec<u8> = wf.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
                        for i in 0..rows * cols {
                            values[i] = f64::from(f16::from_f32(wf[i]).to_f32());
                        }
                        (d, Vec::new())
                    }
                    _ => {
                        for i in 0..rows * cols {
                            values[i] = f64::from(wf[i]);
                        }
                        (bytemuck::cast_slice(&wf).to_vec(), Vec::new())
                    }
                }
            }
        };
        Self {
            dtype,
            scale,
            rows,
            cols,
            data,
            scales,
            values,
        }
    }
}

/// Random f32 activations for `n` tokens and their int8 form (quantized by the scalar table).
struct TestActs {
    x: Vec<f32>,
    cols: usize,
    stride: usize,
    q: Vec<i8>,
    cs: Vec<i32>,
    quant: Vec<ActQuant>,
}

impl TestActs {
    fn new(n: usize, cols: usize, r: &mut ChaCha8Rng) -> Self {
        let x: Vec<f32> = (0..n * cols).map(|_| r.gen_range(-2.0f32..2.0)).collect();
        let stride = round_up(cols, BLOCK);
        let mut q = vec![0i8; n * stride];
        let mut cs = vec![0i32; n * stride / CHUNK];
        let mut quant = vec![ActQuant { d: 0.0, sum: 0 }; n];
        quantize_rows(&SCALAR, &x, cols, n, stride, &mut q, &mut cs, &mut quant);
        Self {
            x,
            cols,
            stride,
            q,
            cs,
            quant,
        }
    }
    fn view(&self) -> Activations<'_> {
        Activations {
            x: &self.x,
            cols: self.cols,
            quantized: Some(QuantizedActs {
                q: &self.q,
                stride: self.stride,
                chunk_sums: &self.cs,
                quant: &self.quant,
            }),
        }
    }
}

const GRANULARITIES: [ScaleKind; 6] = [
    ScaleKind::PerTensor,
    ScaleKind::PerRow,
    ScaleKind::PerGroup(32),
    ScaleKind::PerGroup(64),
    ScaleKind::PerGroup(96),
    ScaleKind::PerGroup(256),
];

/// Every (type, granularity) pair the format allows.
fn cases() -> Vec<(ElementType, ScaleKind)> {
    let mut v = Vec::new();
    for t in [ElementType::Ternary2, ElementType::Ternary3] {
        for g in GRANULARITIES {
            v.push((t, g));
        }
    }
    v.push((ElementType::Int8, ScaleKind::PerRow));
    for g in [32, 64, 96] {
        v.push((ElementType::Int4, ScaleKind::PerGroup(g)));
    }
    v.push((ElementType::F16, ScaleKind::None));
    v.push((ElementType::F32, ScaleKind::None));
    v
}

/// The scalar table on every type and granularity against f64 sums of the unpacked weights (with the int8
/// activations for int8-activation types).
#[test]
fn scalar_matmul_matches_f64_for_every_type_and_granularity() {
    let mut r = rng(5);
    let (rows, cols, n) = (37usize, 160usize, 3usize);
    let acts = TestActs::new(n, cols, &mut r);
    for (dtype, scale) in cases() {
        let m = TestMatrix::new(dtype, scale, rows, cols, &mut r);
        let (rr, tt) = (5..29usize, 0..n);
        let mut out = vec![0f32; rr.len() * tt.len()];
        matmul(&SCALAR, &m.view(), &acts.view(), tt.clone(), rr.clone(), &mut out);
        let int8 = SCALAR.act_format(dtype) == ActFormat::Int8;
        for (ti, t) in tt.clone().enumerate() {
            for (ri, row) in rr.clone().enumerate() {
                let (mut acc, mut mag) = (0.0f64, 0.0f64);
                for c in 0..cols {
                    let x = if int8 {
                        f64::from(acts.q[t * acts.stride + c]) * f64::from(acts.quant[t].d)
                    } else {
                        f64::from(acts.x[t * cols + c])
                    };
                    let v = m.values[row * cols + c] * x;
                    acc += v;
                    mag += v.abs();
                }
                close(out[ti * rr.len() + ri], acc, mag);
            }
        }
    }
}

/// Every table's matrix-vector and tile entries against the scalar table: identical bits for the
/// int8-activation types, f32 rounding for f16/f32.
#[test]
fn every_table_matches_the_scalar_matmul() {
    let tables = simd_tables();
    let mut r = rng(7);
    for cols in [32usize, 64, 96, 160, 200, 576, 1000, 1537] {
        for (dtype, scale) in cases() {
            if let ScaleKind::PerGroup(g) = scale {
                if g as usize > cols && dtype == ElementType::Int4 {
                    continue;
                }
            }
            let rows = 1 + r.gen_range(0..41usize);
            let n = 1 + r.gen_range(0..9usize);
            let m = TestMatrix::new(dtype, scale, rows, cols, &mut r);
            let acts = TestActs::new(n, cols, &mut r);
            let (mv, av) = (m.view(), acts.view());
            let lo = r.gen_range(0..rows);
            let hi = r.gen_range(lo + 1..=rows);
            let t0 = r.gen_range(0..n);
            let mut want = vec![0f32; n * rows];
            scalar::gemm(&mv, &av, 0..n, 0..rows, &mut want);
            // Σ|w·x| per output: the scale of f32 rounding differences between summation orders.
            let mag: Vec<f64> = (0..n * rows)
                .map(|i| {
                    let (t, row) = (i / rows, i % rows);
                    (0..cols)
                        .map(|c| (m.values[row * cols + c] * f64::from(acts.x[t * cols + c])).abs())
                        .sum()
                })
                .collect();
            for k in &tables {
                let mk = k.for_type(dtype);
                assert_eq!(mk.act, SCALAR.for_type(dtype).act, "{}: activation format", k.name);
                let what = |e: &str| format!("{} {dtype:?} {scale:?} {rows}x{cols} n {n}: {e}", k.name);
                let mut tile = vec![0f32; n * rows];
                (mk.gemm)(&mv, &av, 0..n, 0..rows, &mut tile);
                let mut part = vec![0f32; (n - t0) * (hi - lo)];
                (mk.gemm)(&mv, &av, t0..n, lo..hi, &mut part);
                let mut vec1 = vec![0f32; hi - lo];
                (mk.gemv)(&mv, &av, t0, lo..hi, &mut vec1);
                let exact = mk.act == ActFormat::Int8;
                let check = |got: f32, i: usize, e: String| {
                    let want = want[i];
                    if exact {
                        assert_eq!(got.to_bits(), want.to_bits(), "{e}: {got} vs {want}");
                    } else {
                        let tol = 1e-5 * mag[i] + 1e-6;
                        assert!(f64::from(got - want).abs() <= tol, "{e}: {got} vs {want}");
                    }
                };
                for t in 0..n {
                    for row in 0..rows {
                        check(
                            tile[t * rows + row],
                            t * rows + row,
                            what(&format!("tile t {t} row {row}")),
                        );
                    }
                }
                for t in t0..n {
                    for row in lo..hi {
                        check(
                            part[(t - t0) * (hi - lo) + row - lo],
                            t * rows + row,
                            what(&format!("tile part t {t} row {row}")),
                        );
                    }
                }
                for row in lo..hi {
                    check(vec1[row - lo], t0 * rows + row, what(&format!("gemv t {t0} row {row}")));
                }
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
