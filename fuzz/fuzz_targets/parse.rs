//! Feeds arbitrary bytes to the .tern parser and touches everything a consumer would read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_format::{AlignedBytes, ModelView, ParseOptions};

fuzz_target!(|data: &[u8]| {
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
});
