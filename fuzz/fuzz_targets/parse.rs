//! Feeds arbitrary bytes to the .tern parser and touches everything a consumer would read.
//!
//! The header and section checksums would stop almost every mutated input at the first check, so each input is
//! parsed twice: as it is, and with its header and section CRCs recomputed (where the section table lets us
//! find the sections), so the fuzzer reaches the section, config, directory and tensor validation behind them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_format::{AlignedBytes, ModelView, ParseOptions};

const HEADER: usize = 64;
const SECTION_ENTRY: usize = 24;

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Rewrites the section CRCs (for sections inside the input) and then the header CRC.
fn reseal(b: &mut [u8]) {
    let Some(count) = u32_at(b, 24) else { return };
    let count = (count as usize).min(64);
    if b.len() < HEADER + count * SECTION_ENTRY {
        return;
    }
    for i in 0..count {
        let e = HEADER + i * SECTION_ENTRY;
        let (Some(off), Some(len)) = (u64_at(b, e + 8), u64_at(b, e + 16)) else { return };
        let end = off.checked_add(len);
        if let Some(end) = end.filter(|&end| end <= b.len() as u64) {
            let crc = crc32fast::hash(&b[off as usize..end as usize]);
            b[e + 4..e + 8].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..40]);
    h.update(&b[HEADER..HEADER + count * SECTION_ENTRY]);
    b[40..44].copy_from_slice(&h.finalize().to_le_bytes());
}

fn exercise(data: &[u8]) {
    let bytes = AlignedBytes::from_slice(data);
    for verify in [true, false] {
        if let Ok(view) = ModelView::parse_with(
            &bytes,
            ParseOptions {
                verify_tensor_checksums: verify,
            },
        ) {
            let _ = view.config().kv_dim();
            for t in view.tensors() {
                let _ = (t.data.last(), t.scales.last(), t.row_bytes(), t.name.len());
            }
            let _ = view.metadata().count();
            let _ = view.tokenizer().map(|t| t.bytes.len());
            let _ = view.chat_template().map(str::len);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    let mut sealed = data.to_vec();
    reseal(&mut sealed);
    exercise(&sealed);
});
