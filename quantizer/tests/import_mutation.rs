//! Mutation test: thousands of corrupted variants of the GGUF fixtures (truncations at every header length and
//! through the data, random byte edits, integers overwritten with boundary values, and targeted edits of every
//! count, length, dimension, type and offset field). Each must parse to `Ok` or a typed `ImportError`, and so must
//! everything done with a parsed file (raw bytes, dequantization, conversion to a validated `SourceModel`): never
//! a panic, never an allocation the file merely claims. Deterministic (seeded).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tern_quantizer::import::gguf::source_model_from_gguf;
use tern_quantizer::import::gguf_file::{GgufFile, MetaType, MetaValue};
use tern_quantizer::ImportError;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// What a mutant led to, beyond parsing.
struct Outcome {
    /// Tensors whose dequantization failed (typed).
    dequant_errors: usize,
    /// Whether it converted into a validated `SourceModel`.
    model_ok: bool,
}

/// Everything a consumer does with a file: parse, read every tensor's bytes, dequantize, convert and validate.
/// Errors are typed by construction; the point is that nothing panics.
fn exercise(bytes: Vec<u8>) -> Result<Outcome, ImportError> {
    let g = GgufFile::from_bytes("mutant.gguf", bytes)?;
    for (_, v) in g.metadata() {
        let _ = v.display_short();
    }
    let mut dequant_errors = 0;
    for t in g.tensors() {
        let raw = g.tensor_bytes(t)?;
        assert_eq!(raw.len() as u64, t.n_bytes, "{}", t.name);
        match g.dequantize(t) {
            Ok(v) => assert_eq!(v.len() as u64, t.n_elements(), "{}", t.name),
            Err(e) => {
                assert!(!e.to_string().is_empty());
                dequant_errors += 1;
            }
        }
    }
    // The model-level path (only tiny-llama.gguf is a model, but it must be panic-free on anything).
    let model = source_model_from_gguf(&g).and_then(|m| m.validate());
    if let Err(e) = &model {
        assert!(!e.to_string().is_empty());
    }
    Ok(Outcome {
        dequant_errors,
        model_ok: model.is_ok(),
    })
}

#[derive(Default)]
struct Tally {
    /// Rejected while parsing or reading tensor bytes.
    rejected: usize,
    /// Parsed, every tensor's bytes readable.
    parsed: usize,
    /// …and converted into a validated model.
    model_ok: usize,
    dequant_errors: usize,
    panics: Vec<String>,
}

impl Tally {
    fn run(&mut self, what: impl FnOnce() -> String, bytes: Vec<u8>) {
        match catch_unwind(AssertUnwindSafe(|| exercise(bytes))) {
            Ok(Ok(o)) => {
                self.parsed += 1;
                self.model_ok += usize::from(o.model_ok);
                self.dequant_errors += o.dequant_errors;
            }
            Ok(Err(e)) => {
                // Rendering the message must not panic either.
                assert!(!e.to_string().is_empty());
                self.rejected += 1;
            }
            Err(_) => self.panics.push(what()),
        }
    }
    fn total(&self) -> usize {
        self.rejected + self.parsed + self.panics.len()
    }
}

/// Boundary values for counts, lengths, dims and offsets.
fn interesting(file_len: u64) -> Vec<u64> {
    vec![
        0,
        1,
        2,
        3,
        5,
        31,
        32,
        63,
        64,
        255,
        256,
        0x7FFF_FFFF,
        0xFFFF_FFFF,
        1 << 32,
        1 << 40,
        1 << 62,
        u64::MAX / 2,
        u64::MAX - 1,
        u64::MAX,
        file_len,
        file_len + 1,
        file_len * 2,
    ]
}

/// Offsets and widths of the integer fields of the header, metadata and tensor infos, found by walking the
/// original (valid) file with the parsed structure as a guide.
fn integer_fields(bytes: &[u8]) -> Vec<(usize, usize, &'static str)> {
    let g = GgufFile::from_bytes("orig.gguf", bytes.to_vec()).unwrap();
    let mut fields = vec![(4, 4, "version"), (8, 8, "tensor count"), (16, 8, "metadata count")];
    let mut pos = 24usize;
    fn value(v: &MetaValue, ty: MetaType, pos: &mut usize, fields: &mut Vec<(usize, usize, &'static str)>) {
        let width = match ty {
            MetaType::U8 | MetaType::I8 | MetaType::Bool => 1,
            MetaType::U16 | MetaType::I16 => 2,
            MetaType::U32 | MetaType::I32 | MetaType::F32 => 4,
            MetaType::U64 | MetaType::I64 | MetaType::F64 => 8,
            MetaType::String => {
                fields.push((*pos, 8, "string length"));
                *pos += 8 + v.as_str().unwrap().len();
                return;
            }
            MetaType::Array => {
                let MetaValue::Array(elem, items) = v else {
                    unreachable!()
                };
                fields.push((*pos, 4, "array element type"));
                fields.push((*pos + 4, 8, "array count"));
                *pos += 12;
                for item in items {
                    value(item, *elem, pos, fields);
                }
                return;
            }
        };
        fields.push((*pos, width, "scalar value"));
        *pos += width;
    }
    for (key, v) in g.metadata() {
        fields.push((pos, 8, "key length"));
        pos += 8 + key.len();
        fields.push((pos, 4, "value type"));
        pos += 4;
        value(v, v.meta_type(), &mut pos, &mut fields);
    }
    for t in g.tensors() {
        fields.push((pos, 8, "tensor name length"));
        pos += 8 + t.name.len();
        fields.push((pos, 4, "tensor n_dims"));
        pos += 4;
        for _ in &t.dims {
            fields.push((pos, 8, "tensor dim"));
            pos += 8;
        }
        fields.push((pos, 4, "tensor type"));
        pos += 4;
        fields.push((pos, 8, "tensor offset"));
        pos += 8;
    }
    assert!(pos as u64 <= g.data_start(), "walker overran the header");
    assert!(
        g.data_start() - (pos as u64) < g.alignment(),
        "walker stopped short of the header end"
    );
    fields
}

fn write_int(bytes: &mut [u8], at: usize, width: usize, v: u64) {
    let le = v.to_le_bytes();
    for (i, b) in bytes.iter_mut().skip(at).take(width).enumerate() {
        *b = le[i];
    }
}

fn mutate_file(name: &str, random_edits: usize, data_stride: usize, seed: u64) -> Tally {
    let orig = fixture(name);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tally = Tally::default();
    let len = orig.len();
    let header_end = GgufFile::from_bytes("orig.gguf", orig.clone()).unwrap().data_start() as usize;

    // 1. Truncation: every length through the header, then every `data_stride`-th through the data.
    for cut in (0..header_end).chain((header_end..len).step_by(data_stride)) {
        tally.run(|| format!("{name}: truncated to {cut} bytes"), orig[..cut].to_vec());
    }

    // 2. Targeted: every integer field of the header, metadata and tensor infos set to each boundary value.
    for (at, width, what) in integer_fields(&orig) {
        for v in interesting(len as u64) {
            let mut m = orig.clone();
            write_int(&mut m, at, width, v);
            tally.run(|| format!("{name}: {what} at {at} set to {v}"), m);
        }
    }

    // 3. Random edits: 1 to 4 bytes flipped, randomised, zeroed or saturated; sometimes a random integer overwrite.
    for i in 0..random_edits {
        let mut m = orig.clone();
        let mut log = Vec::new();
        for _ in 0..rng.gen_range(1..=4) {
            let at = rng.gen_range(0..len);
            match rng.gen_range(0..5) {
                0 => m[at] ^= 1 << rng.gen_range(0..8),
                1 => m[at] = rng.gen(),
                2 => m[at] = 0,
                3 => m[at] = 0xFF,
                _ => {
                    let width = [1, 2, 4, 8][rng.gen_range(0..4)];
                    let pool = interesting(len as u64);
                    let v = pool[rng.gen_range(0..pool.len())];
                    write_int(&mut m, at, width, v);
                }
            }
            log.push(at);
        }
        tally.run(|| format!("{name}: random edit #{i} at {log:?}"), m);
    }

    // 4. Grown files: trailing garbage and an inserted byte in the header must still parse or fail cleanly.
    let mut grown = orig.clone();
    grown.extend(std::iter::repeat_n(0xAB, 4096));
    tally.run(|| format!("{name}: 4096 bytes appended"), grown);
    for at in (24..header_end).step_by(7) {
        let mut m = orig.clone();
        m.insert(at, 0x42);
        tally.run(|| format!("{name}: byte inserted at {at}"), m);
    }
    tally
}

#[test]
fn mutated_tiny_gguf_never_panics() {
    let t = mutate_file("tiny.gguf", 4000, 3, 0x5EED_0001);
    assert!(
        t.panics.is_empty(),
        "{} of {} mutations panicked, e.g. {:?}",
        t.panics.len(),
        t.total(),
        &t.panics[..t.panics.len().min(10)]
    );
    assert!(t.total() > 10_000, "only {} mutations", t.total());
    assert!(t.rejected > 0 && t.parsed > 0);
    println!(
        "tiny.gguf: {} mutations: {} rejected with a typed error, {} parsed ({} typed dequantization errors)",
        t.total(),
        t.rejected,
        t.parsed,
        t.dequant_errors
    );
}

#[test]
fn mutated_tiny_llama_gguf_never_panics_through_the_model_path() {
    let t = mutate_file("tiny-llama.gguf", 1500, 61, 0x5EED_0002);
    assert!(
        t.panics.is_empty(),
        "{} of {} mutations panicked, e.g. {:?}",
        t.panics.len(),
        t.total(),
        &t.panics[..t.panics.len().min(10)]
    );
    assert!(t.total() > 5_000, "only {} mutations", t.total());
    assert!(
        t.model_ok > 0,
        "some mutants (e.g. edited weights) are still valid models"
    );
    println!(
        "tiny-llama.gguf: {} mutations: {} rejected with a typed error, {} parsed, {} still valid models",
        t.total(),
        t.rejected,
        t.parsed,
        t.model_ok
    );
}
