//! Golden bytes: the writer's output for a hand-built model is checked field by field against FORMAT.md, and
//! byte for byte against `tests/fixtures/tiny.tern` (regenerate only on an intentional format change with
//! `TERN_BLESS=1 cargo test -p tern-format --test golden`, and bump the version if old files break).

mod common;

use tern_format::{AlignedBytes, ElementType, ModelView, Role, ScaleKind};

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[test]
fn header_fields_match_the_spec() {
    let bytes = common::tiny_writer().to_bytes().unwrap();
    assert_eq!(&bytes[0..8], b"TERNMODL");
    assert_eq!(u32_at(&bytes, 8), 1, "version");
    assert_eq!(u32_at(&bytes, 12), 64, "header size");
    assert_eq!(u64_at(&bytes, 16), bytes.len() as u64, "file size");
    let sections = u32_at(&bytes, 24) as usize;
    assert_eq!(sections, 6);
    assert_eq!(u64_at(&bytes, 32), 64, "section table offset");
    let crc = crc32fast::hash(&[&bytes[..40], &bytes[64..64 + 24 * sections]].concat());
    assert_eq!(u32_at(&bytes, 40), crc, "header crc covers bytes 0..40 and the table");
    let kinds: Vec<u32> = (0..sections).map(|i| u32_at(&bytes, 64 + 24 * i)).collect();
    assert_eq!(kinds, [1, 2, 3, 4, 6, 5]);
    // CONFIG: hidden 64 at +4, layers 1 at +8; flags (tied) at +72.
    let cfg = u64_at(&bytes, 64 + 8) as usize;
    assert_eq!(cfg % 64, 0);
    assert_eq!(u32_at(&bytes, cfg), 1, "arch llama");
    assert_eq!(u32_at(&bytes, cfg + 4), 64);
    assert_eq!(u32_at(&bytes, cfg + 8), 1);
    assert_eq!(
        f32::from_le_bytes(bytes[cfg + 36..cfg + 40].try_into().unwrap()),
        10000.0
    );
    assert_eq!(u32_at(&bytes, cfg + 68), 1, "flags: tied embeddings");
}

#[test]
fn ternary_bytes_are_laid_out_as_documented() {
    // Row of 64: weight 0 = +1 (code 2), weight 16 = −1 (code 0), weight 63 = +1, the rest 0 (code 1).
    let mut row = [0i8; 64];
    row[0] = 1;
    row[16] = -1;
    row[63] = 1;
    let mut b = [tern_format::blocks::BlockTernary2 { qs: [0; 16] }];
    tern_format::blocks::pack_ternary2_row(&row, &mut b).unwrap();
    let mut want = [0x55u8; 16];
    want[0] = 0b01_01_00_10; // weights 0 (bits 0-1) and 16 (bits 2-3)
    want[15] = 0b10_01_01_01; // weight 63 = 15 + 48 → byte 15, bits 6-7
    assert_eq!(b[0].qs, want);

    // Base 3: an all-zero row is code 1 everywhere: v = 11111₃ = 121, stored ceil(121·256/243) = 128.
    let mut b3 = [tern_format::blocks::BlockTernary3 { qs: [0; 13] }];
    tern_format::blocks::pack_ternary3_row(&[0i8; 64], &mut b3).unwrap();
    assert_eq!(b3[0].qs, [128u8; 13]);
    // Weight 0 = +1 makes byte 0's leading trit 2: v = 21111₃ = 202 → ceil(202·256/243) = 213.
    let mut r = [0i8; 64];
    r[0] = 1;
    tern_format::blocks::pack_ternary3_row(&r, &mut b3).unwrap();
    assert_eq!(b3[0].qs[0], 213);
}

#[test]
fn parsed_view_matches_what_was_written() {
    let bytes = AlignedBytes::from_slice(&common::tiny_writer().to_bytes().unwrap());
    let v = ModelView::parse(&bytes).unwrap();
    assert_eq!(v.config(), &common::tiny_config());
    assert_eq!(v.tensor_count(), 6);
    assert_eq!(v.metadata_value("general.source"), Some("unit test"));
    assert_eq!(v.metadata().count(), 2);
    assert!(v.chat_template().unwrap().contains("messages"));
    assert!(v.tokenizer().unwrap().bytes.starts_with(b"{\"version\""));
    let k = v.find_role(Role::AttnK, Some(0)).unwrap();
    assert_eq!((k.dtype, k.scale), (ElementType::Ternary3, ScaleKind::PerRow));
    assert_eq!(k.data.len(), 32 * 13);
    assert_eq!(k.scales.len(), 32);
    for t in v.tensors() {
        assert_eq!(t.data_offset() % 64, 0, "{} aligned", t.name);
    }
}

#[test]
fn fixture_bytes_are_stable() {
    let bytes = common::tiny_writer().to_bytes().unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny.tern");
    if std::env::var_os("TERN_BLESS").is_some() {
        std::fs::write(path, &bytes).unwrap();
    }
    let golden = std::fs::read(path).expect("tests/fixtures/tiny.tern (bless with TERN_BLESS=1)");
    assert_eq!(bytes.len(), golden.len(), "file length changed");
    if let Some(i) = bytes.iter().zip(&golden).position(|(a, b)| a != b) {
        panic!("writer output differs from the golden file at byte {i}");
    }
}

#[test]
fn streamed_file_equals_the_golden_bytes_and_leaves_no_temporary() {
    // `write_file` streams header, sections and tensors with their padding; the committed fixture (and
    // `to_bytes`) are the reference.
    let dir = std::env::temp_dir().join(format!("tern-golden-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.tern");
    let writer = common::tiny_writer();
    let written = writer.write_file(&path).unwrap();
    let streamed = std::fs::read(&path).unwrap();
    let golden = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny.tern")).unwrap();
    assert_eq!(written, streamed.len() as u64);
    assert!(
        streamed == golden,
        "streamed file differs from tests/fixtures/tiny.tern"
    );
    assert!(streamed == writer.to_bytes().unwrap());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from("tiny.tern")],
        "only the renamed file remains"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
