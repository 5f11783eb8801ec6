//! `ModelView::layout` / `from_layout`: rebuilding a view over the same bytes (at another address) gives the
//! same view without parsing again, and bytes that changed afterwards can make it wrong but never make it
//! panic or read out of bounds.

mod common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tern_format::{AlignedBytes, FormatError, ModelView};

/// Everything a consumer reads from a view, as comparable values.
fn contents(v: &ModelView<'_>) -> String {
    let mut out = format!("{:?}\n", v.config());
    for t in v.tensors() {
        out += &format!(
            "{} {:?} {:?} {:?} {:?} {:?} {:?}\n",
            t.name, t.role, t.layer, t.dtype, t.shape, t.data, t.scales
        );
    }
    for kv in v.metadata() {
        out += &format!("{kv:?}\n");
    }
    out += &format!("{:?} {:?}", v.tokenizer().map(|t| (t.kind, t.bytes)), v.chat_template());
    out
}

#[test]
fn from_layout_rebuilds_the_same_view_at_another_address() {
    let bytes = AlignedBytes::from_slice(&common::tiny_writer().to_bytes().unwrap());
    let view = ModelView::parse(&bytes).unwrap();
    let layout = view.layout();
    let copy = bytes.clone();
    assert_ne!(copy.as_ptr(), bytes.as_ptr());
    let rebuilt = ModelView::from_layout(&copy, &layout).unwrap();
    assert_eq!(contents(&rebuilt), contents(&view));
    assert!(view.chat_template().is_some() && view.tokenizer().is_some() && view.metadata().count() == 2);
    assert_eq!(rebuilt.layout(), layout);
}

#[test]
fn from_layout_checks_length_alignment_and_bounds() {
    let raw = common::tiny_writer().to_bytes().unwrap();
    let bytes = AlignedBytes::from_slice(&raw);
    let layout = ModelView::parse(&bytes).unwrap().layout();
    let short = AlignedBytes::from_slice(&raw[..raw.len() - 1]);
    assert!(matches!(
        ModelView::from_layout(&short, &layout),
        Err(FormatError::FileSizeMismatch { .. })
    ));
    let shifted = AlignedBytes::from_slice(&[&[0u8][..], &raw].concat());
    assert_eq!(
        ModelView::from_layout(&shifted[1..], &layout).unwrap_err(),
        FormatError::Misaligned
    );

    // Same length, changed contents: whatever comes out is a typed error or a view whose every access is
    // still bounds-checked.
    let mut rng = ChaCha8Rng::seed_from_u64(0x1a70);
    for _ in 0..3000 {
        let mut b = AlignedBytes::from_slice(&raw);
        for _ in 0..rng.gen_range(1..8) {
            let i = rng.gen_range(0..b.len());
            b[i] = rng.gen();
        }
        if let Ok(v) = ModelView::from_layout(&b, &layout) {
            let _ = contents(&v);
        }
    }
}
