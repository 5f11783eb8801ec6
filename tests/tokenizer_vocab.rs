//! llama.cpp's tokenizer test suite on the tokenizer that `tern tokenize`, `tern run` and the runtime use.
//!
//! llama.cpp ships vocabulary-only GGUFs (`ggml-vocab-*.gguf`, no tensors) with test strings (`.inp`, separated by
//! a line `__ggml_vocab_test__`) and the ids Hugging Face's tokenizer gives for them (`.out`, one line per case,
//! ids separated by spaces; no BOS: llama.cpp's tests/test-tokenizer-0 encodes with `add_special = false`).
//! scripts/fetch-assets.sh unpacks them into assets/llama-vocab/ from the llama-cpp-python source package.
//! Each vocabulary is loaded by `tern_tools::tokenize::load_tokenizer` (the importer synthesises the
//! `tokenizer.json`, the runtime's `Tokenizer` encodes), every case is encoded and compared id for id.

use std::path::PathBuf;
use std::process::Command;

use tern_quantizer::error::ImportError;
use tern_quantizer::import::gguf_file::GgufFile;
use tern_quantizer::import::tokenizer::tokenizer_json_from_gguf;
use tern_tools::tokenize::load_tokenizer;

/// Vocabularies whose every case must match.
const VOCABS: &[&str] = &[
    "llama-spm",
    "llama-bpe",
    "gpt-2",
    "phi-3",
    "qwen2",
    "starcoder",
    "refact",
    "command-r",
    "mpt",
    "falcon",
    "deepseek-coder",
];

fn vocab_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/llama-vocab")
}

/// The GGUF of vocabulary `name`; panics (the test fails) when the assets are missing.
fn gguf(name: &str) -> PathBuf {
    let p = vocab_dir().join(format!("ggml-vocab-{name}.gguf"));
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-assets.sh (it unpacks llama.cpp's tokenizer test vocabularies)",
        p.display()
    );
    p
}

/// The test cases of vocabulary `name`, read as llama.cpp's test-tokenizer-0.cpp reads them.
fn cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let base = gguf(name);
    let read = |ext: &str| {
        let p = PathBuf::from(format!("{}.{ext}", base.display()));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}: run scripts/fetch-assets.sh", p.display()))
    };
    let (inp, out) = (read("inp"), read("out"));
    const SEP: &str = "\n__ggml_vocab_test__\n";
    let mut texts = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find(SEP) {
            Some(i) => {
                texts.push(rest[..i].to_string());
                rest = &rest[i + SEP.len()..];
            }
            None => {
                texts.push(rest.to_string());
                rest = "";
            }
        }
    }
    let expected: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        texts.len(),
        expected.len(),
        "{name}: .inp and .out disagree on the number of cases"
    );
    assert!(texts.len() > 30, "{name}: only {} cases", texts.len());
    texts.into_iter().zip(expected).collect()
}

#[test]
fn llama_cpp_vocab_cases_tokenize_exactly() {
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for &name in VOCABS {
        let path = gguf(name);
        let g = GgufFile::open(&path).unwrap();
        assert!(g.tensors().is_empty(), "{name}: expected a vocabulary-only GGUF");
        let tok = load_tokenizer(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let cases = cases(name);
        let mut ok = 0;
        for (i, (text, want)) in cases.iter().enumerate() {
            let got = tok.encode(text).unwrap();
            if &got == want {
                ok += 1;
            } else {
                failures.push(format!("{name} case {i} {text:?}:\n  want {want:?}\n  got  {got:?}"));
            }
        }
        report.push(format!("{name}: {ok}/{} cases match", cases.len()));
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}\n{}", report.join("\n"), failures.join("\n"));
}

/// `Tokenizer::piece` gives llama.cpp's pieces: concatenated, they are the text again (after SentencePiece's
/// prefix space), byte tokens and partial UTF-8 characters included.
#[test]
fn pieces_concatenate_to_the_text() {
    for (name, prefix) in [
        ("llama-spm", " "),
        ("phi-3", " "),
        ("llama-bpe", ""),
        ("gpt-2", ""),
        ("qwen2", ""),
    ] {
        let tok = load_tokenizer(&gguf(name)).unwrap();
        for (text, _) in cases(name) {
            if text.is_empty() {
                continue;
            }
            let ids = tok.encode(&text).unwrap();
            let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.piece(id).unwrap()).collect();
            assert_eq!(String::from_utf8(bytes).unwrap(), format!("{prefix}{text}"), "{name}");
        }
    }
}

/// BOS: the SentencePiece and Llama-3 vocabularies add it (llama.cpp's defaults; `add_bos_token` in the file),
/// GPT-2 does not.
#[test]
fn bos_follows_the_vocabulary() {
    for (name, bos) in [("llama-spm", Some(1)), ("llama-bpe", Some(128000)), ("gpt-2", None)] {
        let tok = load_tokenizer(&gguf(name)).unwrap();
        let ids = tok.encode_prompt("Hello world").unwrap();
        let plain = tok.encode("Hello world").unwrap();
        match bos {
            Some(b) => assert_eq!(ids, [vec![b], plain].concat(), "{name}"),
            None => assert_eq!(ids, plain, "{name}"),
        }
    }
}

/// A WordPiece (BERT) vocabulary is a typed error naming the kind; an unknown pre-tokenizer one naming it.
#[test]
fn unsupported_vocab_is_a_clear_error() {
    let path = gguf("bert-bge");
    let g = GgufFile::open(&path).unwrap();
    match tokenizer_json_from_gguf(&g) {
        Err(ImportError::UnsupportedTokenizer { key, value, .. }) => {
            assert_eq!((key, value.as_str()), ("tokenizer.ggml.model", "bert"))
        }
        other => panic!("expected UnsupportedTokenizer, got {:?}", other.map(|j| j.len())),
    }
    let msg = format!("{:#}", load_tokenizer(&path).err().unwrap());
    assert!(msg.contains("tokenizer.ggml.model = 'bert'"), "{msg}");
    // A byte-level vocabulary whose pre-tokenizer (DeepSeek LLM's) is not implemented names the pre-tokenizer.
    let msg = format!("{:#}", load_tokenizer(&gguf("deepseek-llm")).err().unwrap());
    assert!(msg.contains("tokenizer.ggml.pre = 'deepseek-llm'"), "{msg}");
}

/// The `tern tokenize` command prints what the library gives: ids with `--ids-only`, `id -> 'piece'` lines.
#[test]
fn tern_tokenize_command_matches_the_reference() {
    let bin = env!("CARGO_BIN_EXE_tern");
    let run = |args: &[&str]| {
        let out = Command::new(bin).arg("tokenize").args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    for name in ["llama-spm", "llama-bpe"] {
        let path = gguf(name);
        let p = path.to_str().unwrap();
        for (text, want) in cases(name)
            .into_iter()
            .filter(|(t, _)| !t.is_empty() && !t.starts_with('-'))
            .take(6)
        {
            let want: Vec<String> = want.iter().map(u32::to_string).collect();
            assert_eq!(
                run(&[p, "--no-bos", "--ids-only", "-p", &text]),
                format!("{}\n", want.join(" "))
            );
        }
    }
    // llama-spm: BOS 1 then "▁Hello" (15043) and "▁world" (3186), as llama-tokenize prints them.
    let p = gguf("llama-spm");
    assert_eq!(
        run(&[p.to_str().unwrap(), "-p", "Hello world"]),
        "     1 -> '<s>'\n 15043 -> ' Hello'\n  3186 -> ' world'\n"
    );
    let out = Command::new(bin)
        .args(["tokenize", gguf("bert-bge").to_str().unwrap(), "-p", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'bert'"));
}

/// A Hugging Face directory's `tokenizer.json` is used as it is, with BOS/EOS from `config.json` and `add_bos_token`
/// from `tokenizer_config.json`: the synthesised tokenizers of a SentencePiece and a byte-level vocabulary, written
/// as such directories, give llama.cpp's expected ids too.
#[test]
fn hugging_face_directories_tokenize_like_their_gguf() {
    for (name, add_bos) in [("llama-spm", true), ("gpt-2", false)] {
        let g = GgufFile::open(gguf(name)).unwrap();
        let dir = std::env::temp_dir().join(format!("tern-tokvocab-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tokenizer.json"), tokenizer_json_from_gguf(&g).unwrap()).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"bos_token_id": 7, "eos_token_id": 8}"#).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            format!(r#"{{"add_bos_token": {add_bos}}}"#),
        )
        .unwrap();
        let tok = load_tokenizer(&dir).unwrap();
        for (text, want) in cases(name) {
            assert_eq!(tok.encode(&text).unwrap(), want, "{name} {text:?}");
        }
        let bos: Vec<u32> = if add_bos { vec![7] } else { vec![] };
        assert_eq!(
            tok.encode_prompt("Hello world").unwrap(),
            [bos, tok.encode("Hello world").unwrap()].concat()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
