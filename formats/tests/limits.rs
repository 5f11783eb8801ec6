//! The parser's limits, seen from both sides: a crafted file past a limit is a typed error when parsed, and the
//! writer refuses to produce what the parser would reject (so everything it writes parses).

mod common;

use tern_format::layout::{section, MAX_TENSORS, NO_LAYER};
use tern_format::{AlignedBytes, FormatError, ModelView, ModelWriter, Role, ScaleKind, Shape, TensorData};

fn one_f32(name: &str) -> TensorData {
    TensorData::f32(name, Role::Other, None, Shape::new(&[1]).unwrap(), &[1.0])
}

#[test]
fn name_offset_near_u32_max_is_a_typed_error() {
    let base = common::tiny_writer().to_bytes().unwrap();
    let entry = common::section_offset(&base, section::TENSORS) + 8;
    for (offset, len) in [(u32::MAX - 3, 8u32), (u32::MAX, u32::MAX), (0, u32::MAX), (u32::MAX, 1)] {
        let mut b = base.clone();
        b[entry..entry + 4].copy_from_slice(&offset.to_le_bytes());
        b[entry + 4..entry + 8].copy_from_slice(&len.to_le_bytes());
        common::reseal(&mut b);
        let b = AlignedBytes::from_slice(&b);
        assert_eq!(
            ModelView::parse(&b).unwrap_err(),
            FormatError::BadTensor {
                index: 0,
                what: "name lies outside the string table"
            },
            "name at {offset} + {len}"
        );
    }
    // The unmodified entry parses, so the error above comes from the patched fields.
    ModelView::parse(&AlignedBytes::from_slice(&base)).unwrap();
}

#[test]
fn writer_refuses_more_tensors_than_the_parser_reads() {
    let mut w = ModelWriter::new(common::tiny_config());
    for i in 0..MAX_TENSORS {
        w.add_tensor(one_f32(&format!("t{i}"))).unwrap();
    }
    assert_eq!(
        w.add_tensor(one_f32("one too many")).unwrap_err(),
        FormatError::TooManyTensors(MAX_TENSORS + 1)
    );
    // Exactly at the limit: written and parsed back, every tensor in place.
    let bytes = AlignedBytes::from_slice(&w.to_bytes().unwrap());
    let view = ModelView::parse(&bytes).unwrap();
    assert_eq!(view.tensor_count() as u64, MAX_TENSORS);
    let last = view.tensor(MAX_TENSORS as usize - 1).unwrap();
    assert_eq!(last.name, format!("t{}", MAX_TENSORS - 1));
    assert_eq!(last.data, 1.0f32.to_le_bytes());
    // The directory is the size the parser expects for that count.
    let dir = common::section_offset(&bytes, section::TENSORS);
    assert_eq!(common::u32_at(&bytes, dir) as u64, MAX_TENSORS);
}

#[test]
fn writer_refuses_entries_the_parser_rejects() {
    let mut w = ModelWriter::new(common::tiny_config());
    // Group sizes the parser reads as BadGroupSize (0 would also divide by zero in the size computation).
    for g in [0u32, 1, 48] {
        let t = TensorData {
            dtype: tern_format::ElementType::Int4,
            scale: ScaleKind::PerGroup(g),
            scales: vec![1.0],
            data: vec![0; 32],
            shape: Shape::new(&[1, 64]).unwrap(),
            ..one_f32("int4")
        };
        assert_eq!(w.add_tensor(t).unwrap_err(), FormatError::BadGroupSize(g), "group {g}");
    }
    // The layer sentinel: written as-is it would read back as "no layer" for a per-block role.
    let t = TensorData {
        role: Role::AttnNorm,
        layer: Some(NO_LAYER),
        ..one_f32("blk.x.attn_norm.weight")
    };
    assert_eq!(w.add_tensor(t).unwrap_err(), FormatError::ReservedLayer);
    // A tokenizer the parser would reject as not UTF-8.
    w.tokenizer_json(vec![b'{', 0xff, b'}']);
    assert_eq!(
        w.to_bytes().unwrap_err(),
        FormatError::BadTokenizer("tokenizer.json is not UTF-8")
    );
    // With a valid tokenizer, the same writer (nothing was added by the refused calls) writes a file that parses.
    w.tokenizer_json(b"{}".to_vec());
    w.add_tensor(one_f32("ok")).unwrap();
    let bytes = AlignedBytes::from_slice(&w.to_bytes().unwrap());
    let view = ModelView::parse(&bytes).unwrap();
    assert_eq!(view.tensor_count(), 1);
    assert_eq!(view.tokenizer().unwrap().bytes, b"{}");
}
