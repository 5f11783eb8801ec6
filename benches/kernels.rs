//! Every kernel of every table this CPU runs (`kernels::available()`), with weight bytes streamed per second
//! next to a plain memory-read bandwidth measured in the same run.
//!
//! `cargo bench --bench kernels` (criterion; `-- <filter>` to pick, e.g. `-- gemv`). Groups:
//! - `read`: the bandwidth probe (one thread summing a buffer larger than the last-level cache) — the roofline
//!   of the `stream` cases;
//! - `gemv/<type>/stream`: one token times a 2560×6912 matrix (a BitNet-2B FFN projection), rotating through
//!   a pool of such matrices larger than the LLC, as a decode step meets its weights; throughput = weight bytes;
//! - `gemv/<type>/cached`: the same matrix over and over (in L2/L3): the kernel's compute speed;
//! - `gemm/<type>`: a 64-token tile against a 2560×2560 matrix (prefill), throughput = weight bytes × tokens;
//! - `quantize_i8`, `attention`: the per-token activation quantization and the f16-KV attention loops.
//!
//! Weights are random bytes (every byte is a valid code for the ternary kernels' arithmetic), so the work is
//! exactly a real model's.
//!
//! Everything runs on one thread and is timed by that thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`), not the
//! wall clock: the numbers stay meaningful on a machine shared with other jobs (time the OS gives to others
//! does not count), while cache and memory contention still do. `tern bench` measures wall-clock speed.

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use tern_format::{ElementType, ScaleKind};
use tern_runtime::kernels::{
    self, quantize_rows, round_up, ActQuant, Activations, Matrix, QuantizedActs, BLOCK, CHUNK,
};
use tern_tools::membw::{Probe, DRAM_PROBE_BYTES};

/// Bytes of the streaming pool (past this machine's 480 MiB L3).
const POOL_BYTES: usize = DRAM_PROBE_BYTES;

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut v = vec![0u8; n];
    for c in v.chunks_mut(8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let b = s.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    v
}

struct Acts {
    x: Vec<f32>,
    cols: usize,
    stride: usize,
    q: Vec<i8>,
    cs: Vec<i32>,
    quant: Vec<ActQuant>,
}

impl Acts {
    fn new(n: usize, cols: usize) -> Self {
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 250.0)
            .collect();
        let stride = round_up(cols, BLOCK);
        let mut q = vec![0i8; n * stride];
        let mut cs = vec![0i32; n * stride / CHUNK];
        let mut quant = vec![ActQuant { d: 0.0, sum: 0 }; n];
        quantize_rows(&kernels::SCALAR, &x, cols, n, stride, &mut q, &mut cs, &mut quant);
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

/// A matrix type as benchmarked: element type, scale granularity and a label.
const TYPES: [(ElementType, ScaleKind, &str); 5] = [
    (ElementType::Ternary2, ScaleKind::PerTensor, "ternary2"),
    (ElementType::Ternary3, ScaleKind::PerTensor, "ternary3"),
    (ElementType::Int8, ScaleKind::PerRow, "int8"),
    (ElementType::Int4, ScaleKind::PerGroup(32), "int4-g32"),
    (ElementType::F16, ScaleKind::None, "f16"),
];

fn view<'a>(
    dtype: ElementType,
    scale: ScaleKind,
    rows: usize,
    cols: usize,
    data: &'a [u8],
    scales: &'a [f32],
) -> Matrix<'a> {
    let row_bytes = dtype.row_bytes(cols as u64).unwrap() as usize;
    Matrix {
        dtype,
        scale,
        rows,
        cols,
        row_bytes,
        data: &data[..rows * row_bytes],
        scales,
    }
}

fn scales(scale: ScaleKind, rows: usize, cols: usize) -> Vec<f32> {
    vec![0.01; scale.count(rows as u64, cols as u64).unwrap() as usize]
}

fn f16_bytes(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| f16::from_f32((i % 97) as f32 / 97.0 - 0.5).to_le_bytes())
        .collect()
}

/// The calling thread's CPU time, as a criterion measurement (nanoseconds).
struct ThreadCpuTime;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuNanos
    }
}

/// Formats CPU nanoseconds like criterion's wall-time formatter (ns…s, and throughput per second).
struct CpuNanos;

impl ValueFormatter for CpuNanos {
    fn scale_values(&self, ns: f64, values: &mut [f64]) -> &'static str {
        let (div, unit) = match ns {
            n if n < 1e3 => (1.0, "ns (cpu)"),
            n if n < 1e6 => (1e3, "µs (cpu)"),
            n if n < 1e9 => (1e6, "ms (cpu)"),
            _ => (1e9, "s (cpu)"),
        };
        values.iter_mut().for_each(|v| *v /= div);
        unit
    }
    fn scale_throughputs(&self, ns: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let (per, unit) = match t {
            Throughput::Bytes(b) | Throughput::BytesDecimal(b) => (*b as f64, "GB/s"),
            Throughput::Elements(e) => (*e as f64, "Gelem/s"),
        };
        let _ = ns;
        values.iter_mut().for_each(|v| *v = per / *v);
        unit
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn config() -> Criterion<ThreadCpuTime> {
    Criterion::default()
        .with_measurement(ThreadCpuTime)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

fn read_bandwidth(c: &mut Criterion<ThreadCpuTime>) {
    let probe = Probe::new(POOL_BYTES);
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Bytes(probe.bytes() as u64));
    g.bench_function("1 thread", |b| b.iter(|| probe.read_once()));
    g.finish();
}

fn gemv(c: &mut Criterion<ThreadCpuTime>) {
    let (rows, cols) = (2560usize, 6912usize);
    let acts = Acts::new(1, cols);
    let av = acts.view();
    let mut out = vec![0f32; rows];
    for (dtype, scale, label) in TYPES {
        let row_bytes = dtype.row_bytes(cols as u64).unwrap() as usize;
        let bytes = rows * row_bytes;
        let pool = if dtype == ElementType::F16 {
            f16_bytes(POOL_BYTES / 2)
        } else {
            random_bytes(POOL_BYTES, 7)
        };
        let s = scales(scale, rows, cols);
        let n_mats = pool.len() / bytes;
        let mut g = c.benchmark_group(format!("gemv/{label}"));
        g.throughput(Throughput::Bytes((bytes + s.len() * 4) as u64));
        for &k in kernels::available() {
            let mut i = 0;
            g.bench_with_input(BenchmarkId::new("stream", k.name), &k, |b, k| {
                b.iter(|| {
                    i = (i + 1) % n_mats;
                    let m = view(dtype, scale, rows, cols, &pool[i * bytes..], &s);
                    kernels::matmul(k, &m, &av, 0..1, 0..rows, &mut out);
                })
            });
            g.bench_with_input(BenchmarkId::new("cached", k.name), &k, |b, k| {
                let m = view(dtype, scale, rows, cols, &pool, &s);
                b.iter(|| kernels::matmul(k, &m, &av, 0..1, 0..rows, &mut out))
            });
        }
        g.finish();
    }
}

fn gemm(c: &mut Criterion<ThreadCpuTime>) {
    let (rows, cols, n) = (2560usize, 2560usize, 64usize);
    let acts = Acts::new(n, cols);
    let av = acts.view();
    let mut out = vec![0f32; rows * n];
    for (dtype, scale, label) in TYPES {
        let row_bytes = dtype.row_bytes(cols as u64).unwrap() as usize;
        let data = if dtype == ElementType::F16 {
            f16_bytes(rows * cols)
        } else {
            random_bytes(rows * row_bytes, 11)
        };
        let s = scales(scale, rows, cols);
        let m = view(dtype, scale, rows, cols, &data, &s);
        let mut g = c.benchmark_group(format!("gemm/{label}"));
        // Weight bytes applied per second (each byte meets all 64 tokens).
        g.throughput(Throughput::Bytes((rows * row_bytes * n) as u64));
        for &k in kernels::available() {
            if k.name == "scalar" && dtype != ElementType::Ternary2 {
                continue; // slow, and its speed is not the point
            }
            g.bench_with_input(BenchmarkId::from_parameter(k.name), &k, |b, k| {
                b.iter(|| kernels::matmul(k, &m, &av, 0..n, 0..rows, &mut out))
            });
        }
        g.finish();
    }
}

fn quantize(c: &mut Criterion<ThreadCpuTime>) {
    let cols = 2560;
    let x: Vec<f32> = (0..cols).map(|i| ((i * 31 % 200) as f32 - 100.0) / 50.0).collect();
    let mut q = vec![0i8; cols];
    let mut cs = vec![0i32; cols / CHUNK];
    let mut g = c.benchmark_group("quantize_i8");
    g.throughput(Throughput::Elements(cols as u64));
    for &k in kernels::available() {
        g.bench_with_input(BenchmarkId::from_parameter(k.name), &k, |b, k| {
            b.iter(|| (k.quantize_i8)(&x, &mut q, &mut cs))
        });
    }
    g.finish();
}

fn attention(c: &mut Criterion<ThreadCpuTime>) {
    let (hd, positions) = (128usize, 512usize);
    let keys: Vec<f16> = (0..hd * positions)
        .map(|i| f16::from_f32((i % 13) as f32 / 13.0))
        .collect();
    let qv: Vec<f32> = (0..hd).map(|i| i as f32 / hd as f32).collect();
    let mut out = vec![0f32; hd];
    let mut g = c.benchmark_group("attention");
    g.throughput(Throughput::Bytes((keys.len() * 2) as u64));
    for &k in kernels::available() {
        g.bench_with_input(BenchmarkId::new("dot_f16", k.name), &k, |b, k| {
            b.iter(|| keys.chunks_exact(hd).map(|kr| (k.dot_f16)(kr, &qv)).sum::<f32>())
        });
        g.bench_with_input(BenchmarkId::new("axpy_f16", k.name), &k, |b, k| {
            b.iter(|| {
                for v in keys.chunks_exact(hd) {
                    (k.axpy_f16)(0.01, v, &mut out);
                }
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = read_bandwidth, gemv, gemm, quantize, attention
}
criterion_main!(benches);
