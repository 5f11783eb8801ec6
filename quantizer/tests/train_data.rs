//! The training-data pipeline: documents and EOS, the token cache, packing, the held-out split and the seeded
//! order, each checked against an independent computation.

use std::collections::HashSet;
use std::path::PathBuf;

use tern_quantizer::data::{
    epoch_permutation, held_out_batches, tokenize_files, train_batch, DataError, DataOrder, HostBatch, PackedData,
};
use tern_quantizer::engine::IGNORE_INDEX;
use tern_quantizer::tiny::{byte_tokenizer_json, TINY_EOS};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-train-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A stream of distinct ids, so every position can be traced.
fn distinct(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| i * 3 + 1).collect()
}

#[test]
fn packing_and_split_cover_the_stream_once_without_overlap() {
    for (n, seq_len, frac) in [
        (1000usize, 7usize, 0.05f64),
        (1001, 9, 0.2),
        (64, 15, 0.25),
        (500, 1, 0.0),
    ] {
        let stream = distinct(n);
        let data = PackedData::split(&stream, seq_len, frac).unwrap();
        let w = seq_len + 1;
        let windows = n / w;
        let held = if frac > 0.0 {
            ((windows as f64 * frac).ceil() as usize).max(1)
        } else {
            0
        };
        assert_eq!(data.held_out_windows(), held, "n {n} L {seq_len}");
        assert_eq!(data.train_windows(), windows - held);
        assert_eq!(data.dropped_tokens(), n - windows * w);
        // Windows in order reproduce the packed prefix of the stream: training first, then held out.
        let mut rebuilt = Vec::new();
        for i in 0..data.train_windows() {
            rebuilt.extend_from_slice(data.train_window(i));
        }
        let train_len = rebuilt.len();
        for i in 0..data.held_out_windows() {
            rebuilt.extend_from_slice(data.held_out_window(i));
        }
        assert_eq!(rebuilt, stream[..windows * w], "n {n} L {seq_len}");
        // The held-out windows are the end of the stream and share no token with training.
        let train: HashSet<u32> = rebuilt[..train_len].iter().copied().collect();
        assert!(rebuilt[train_len..].iter().all(|t| !train.contains(t)));
        assert_eq!(
            PackedData::split(&stream, seq_len, frac).unwrap(),
            data,
            "deterministic"
        );
    }
}

#[test]
fn split_rejects_too_little_data_and_bad_fractions() {
    assert!(matches!(
        PackedData::split(&distinct(10), 9, 0.1),
        Err(DataError::TooLittleData { .. })
    ));
    assert!(matches!(
        PackedData::split(&distinct(100), 9, 1.0),
        Err(DataError::BadFraction(_))
    ));
    assert!(matches!(
        PackedData::split(&distinct(100), 0, 0.1),
        Err(DataError::ZeroSeqLen)
    ));
    assert!(PackedData::split(&distinct(20), 9, 0.1).is_ok());
}

#[test]
fn epoch_permutations_are_seeded_permutations() {
    let n = 257;
    let p = epoch_permutation(7, 0, n);
    let mut sorted = p.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..n as u32).collect::<Vec<_>>());
    assert_eq!(p, epoch_permutation(7, 0, n), "same seed and epoch");
    assert_ne!(p, epoch_permutation(8, 0, n), "other seed");
    assert_ne!(p, epoch_permutation(7, 1, n), "other epoch");
    assert_ne!(p, (0..n as u32).collect::<Vec<_>>(), "actually shuffled");
}

#[test]
fn every_training_token_is_seen_once_per_epoch_in_batch_order() {
    let seq_len = 5;
    let data = PackedData::split(&distinct(6 * 41 + 3), seq_len, 0.1).unwrap();
    let n = data.train_windows();
    let batch = 3;
    let mut order = DataOrder::new(11, n);
    // Three epochs; batches straddle epoch boundaries since 3 does not divide n.
    let mut draws = 0u64;
    let mut seen_windows: Vec<Vec<u32>> = Vec::new();
    let mut b = HostBatch::default();
    while draws + (batch as u64) <= 3 * n as u64 {
        train_batch(&data, &mut order, draws, batch, &mut b);
        assert_eq!(b.tokens.len(), batch * seq_len);
        for r in 0..batch {
            let toks = &b.tokens[r * seq_len..(r + 1) * seq_len];
            let tgts = &b.targets[r * seq_len..(r + 1) * seq_len];
            // Targets are the inputs shifted by one within the window.
            assert_eq!(&toks[1..], &tgts[..seq_len - 1]);
            let mut window = toks.to_vec();
            window.push(tgts[seq_len - 1]);
            seen_windows.push(window);
        }
        draws += batch as u64;
    }
    for epoch in 0..2 {
        let mut tokens: Vec<u32> = seen_windows[epoch * n..(epoch + 1) * n].concat();
        tokens.sort_unstable();
        let mut expected: Vec<u32> = (0..n).flat_map(|i| data.train_window(i).to_vec()).collect();
        expected.sort_unstable();
        assert_eq!(
            tokens, expected,
            "epoch {epoch} covers every training token exactly once"
        );
    }
    // Random access (a resumed run) gives the same windows as the sequential pass.
    let mut fresh = DataOrder::new(11, n);
    for draw in [2 * n as u64 + 1, 5, n as u64, 0] {
        let w = fresh.window_of(draw);
        assert_eq!(data.train_window(w), &seen_windows[draw as usize][..]);
    }
    // Another seed, another order.
    let mut other = DataOrder::new(12, n);
    assert!((0..n as u64).any(|d| other.window_of(d) != DataOrder::new(11, n).window_of(d)));
}

#[test]
fn held_out_batches_pad_with_ignored_targets() {
    let seq_len = 4;
    let data = PackedData::split(&distinct(5 * 50), seq_len, 0.1).unwrap();
    assert_eq!(data.held_out_windows(), 5);
    let batches = held_out_batches(&data, 2, usize::MAX);
    assert_eq!(batches.len(), 3);
    let valid: usize = batches
        .iter()
        .map(|b| b.targets.iter().filter(|&&t| t != IGNORE_INDEX).count())
        .sum();
    assert_eq!(valid, 5 * seq_len);
    assert!(batches
        .iter()
        .all(|b| b.tokens.len() == 2 * seq_len && b.targets.len() == 2 * seq_len));
    assert_eq!(&batches[2].targets[seq_len..], &[IGNORE_INDEX; 4]);
    assert_eq!(held_out_batches(&data, 2, 3).len(), 2, "capped at 3 windows");
}

#[test]
fn text_files_tokenize_to_documents_separated_by_eos_and_are_cached() {
    let dir = temp_dir("tok");
    let a = dir.join("a.txt");
    let b = dir.join("b.txt");
    std::fs::write(&a, "Hello world.\nSecond line.\n\n\nNext doc\n").unwrap();
    std::fs::write(&b, "B file é\n").unwrap();
    let json = byte_tokenizer_json();
    let cache = dir.join("cache");
    let files = vec![a.clone(), b.clone()];
    let (tokens, report) = tokenize_files(&json, Some(TINY_EOS), &files, Some(&cache)).unwrap();
    // Independent expectation: the byte tokenizer maps every byte to its value.
    let mut expected = Vec::new();
    for doc in ["Hello world.\nSecond line.", "Next doc", "B file é"] {
        expected.extend(doc.bytes().map(u32::from));
        expected.push(TINY_EOS);
    }
    assert_eq!(tokens, expected);
    assert!(!report.from_cache);
    let cache_file = report.cache_path.clone().unwrap();
    assert!(cache_file.exists());
    let (again, report2) = tokenize_files(&json, Some(TINY_EOS), &files, Some(&cache)).unwrap();
    assert_eq!(again, expected);
    assert!(report2.from_cache);
    // A damaged cache is rebuilt, not trusted.
    let mut bytes = std::fs::read(&cache_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&cache_file, &bytes).unwrap();
    let (rebuilt, report3) = tokenize_files(&json, Some(TINY_EOS), &files, Some(&cache)).unwrap();
    assert_eq!(rebuilt, expected);
    assert!(!report3.from_cache);
    // Changing a file changes the key.
    std::fs::write(&b, "B file changed\n").unwrap();
    let (changed, report4) = tokenize_files(&json, Some(TINY_EOS), &files, Some(&cache)).unwrap();
    assert!(!report4.from_cache);
    assert_ne!(changed, expected);
    // Non-UTF-8 input is a typed error.
    let latin1 = dir.join("latin1.txt");
    std::fs::write(&latin1, b"price \xA3 5\n").unwrap();
    assert!(matches!(
        tokenize_files(&json, Some(TINY_EOS), &[latin1], None),
        Err(DataError::NotUtf8 { offset: 6, .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
