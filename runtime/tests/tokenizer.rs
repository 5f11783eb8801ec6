//! The embedded-tokenizer wrapper on a small byte-level BPE tokenizer.json built here: BOS policy, special
//! tokens, streaming decoding of multi-byte UTF-8 split across tokens, stop tokens and chat templates.

use serde_json::json;
use tern_format::{Architecture, ModelConfig, RopeScaling, RopeStyle, NO_TOKEN};
use tern_runtime::tokenizer::{ChatMessage, Tokenizer};

/// GPT-2's byte → printable character table.
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![' '; 256];
    for (b, c) in bs.iter().zip(&cs) {
        out[*b as usize] = char::from_u32(*c).unwrap();
    }
    out
}

const BOS: u32 = 256;
const IM_START: u32 = 257;
const IM_END: u32 = 258;

fn tokenizer_json() -> Vec<u8> {
    let chars = byte_chars();
    let mut vocab = serde_json::Map::new();
    for (i, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), json!(i));
    }
    vocab.insert("<s>".into(), json!(BOS));
    vocab.insert("<|im_start|>".into(), json!(IM_START));
    vocab.insert("<|im_end|>".into(), json!(IM_END));
    let merges = [("h", "e"), ("l", "l"), ("Ġ", "w"), ("he", "ll")];
    for (id, (a, b)) in (259..).zip(merges) {
        vocab.insert(format!("{a}{b}"), json!(id));
    }
    let added = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let t = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(BOS, "<s>"), added(IM_START, "<|im_start|>"), added(IM_END, "<|im_end|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab,
            "merges": merges.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>(),
        }
    });
    serde_json::to_vec(&t).unwrap()
}

fn config(add_bos: bool) -> ModelConfig {
    ModelConfig {
        arch: Architecture::Llama,
        hidden_size: 64,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 32,
        ffn_size: 64,
        vocab_size: 263,
        context_length: 64,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        rope_style: RopeStyle::Interleaved,
        norm_eps: 1e-5,
        tied_embeddings: true,
        bos_token: BOS,
        eos_token: IM_END,
        pad_token: NO_TOKEN,
        add_bos,
    }
}

fn tok(add_bos: bool, template: Option<&str>) -> Tokenizer {
    Tokenizer::from_json(&tokenizer_json(), &config(add_bos), template).unwrap()
}

#[test]
fn encode_decode_and_bos_policy() {
    let t = tok(true, None);
    let ids = t.encode("hello world").unwrap();
    assert_eq!(ids[0], 262, "merges apply: 'hell'");
    assert_eq!(t.decode(&ids, false).unwrap(), "hello world");
    assert_eq!(t.encode_prompt("hello").unwrap()[0], BOS);
    assert!(t.adds_bos());
    let no_bos = tok(false, None);
    assert_eq!(no_bos.encode_prompt("hello").unwrap(), no_bos.encode("hello").unwrap());
    assert!(!no_bos.adds_bos());
    // Special-token text maps to its id; decoding can drop it.
    let ids = t.encode("<|im_start|>user").unwrap();
    assert_eq!(ids[0], IM_START);
    assert_eq!(t.decode(&ids, true).unwrap(), "user");
    assert_eq!(t.stop_tokens(), &[IM_END]);
    assert!(t.is_stop(IM_END) && !t.is_stop(BOS));
}

#[test]
fn streaming_never_splits_a_character() {
    let t = tok(false, None);
    let text = "héllo 世界 — ok 🙂!";
    let ids = t.encode(text).unwrap();
    assert!(
        ids.len() > text.chars().count(),
        "multi-byte characters span several tokens"
    );
    let mut stream = t.stream(&[]);
    let mut out = String::new();
    let mut empty = 0;
    for &id in &ids {
        let piece = stream.push(id).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "partial character emitted: {piece:?}");
        if piece.is_empty() {
            empty += 1;
        }
        out.push_str(&piece);
    }
    out.push_str(&stream.finish().unwrap());
    assert_eq!(out, text);
    assert!(
        empty >= 5,
        "incomplete characters were held back ({empty} empty pieces)"
    );

    // With the prompt as context, only new text comes out.
    let prompt = t.encode("hello").unwrap();
    let mut stream = t.stream(&prompt);
    let mut out = String::new();
    for id in t.encode(" world").unwrap() {
        out.push_str(&stream.push(id).unwrap());
    }
    assert_eq!(out, " world");

    // A stream that ends inside a character flushes it lossily instead of losing it.
    let mut stream = t.stream(&[]);
    let first_byte_of_e_acute = 0xC3;
    assert_eq!(stream.push(first_byte_of_e_acute).unwrap(), "");
    assert_eq!(stream.finish().unwrap(), "\u{FFFD}");
}

#[test]
fn chat_templates() {
    let chatml = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + \
                  '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    let t = tok(false, Some(chatml));
    let msgs = [ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")];
    let s = t.apply_chat_template(&msgs, true).unwrap();
    assert_eq!(
        s,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = t.encode(&s).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == IM_START).count(), 3);

    // No template in the file but ChatML tokens in the vocabulary: ChatML.
    let fallback = tok(false, None).apply_chat_template(&msgs[1..], true).unwrap();
    assert_eq!(fallback, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");

    // Python string methods and raise_exception, as Hugging Face templates use them.
    let py = "{% for m in messages %}{% if m.role == 'bad' %}{{ raise_exception('no bad roles') }}{% endif %}\
              {{ bos_token }}[{{ m.content.strip().upper() }}]{% if m.content.startswith(' H') %}*{% endif %}{% endfor %}";
    let t = tok(false, Some(py));
    assert_eq!(
        t.apply_chat_template(&[ChatMessage::new("user", " Hi ")], false)
            .unwrap(),
        "<s>[HI]*"
    );
    let err = t
        .apply_chat_template(&[ChatMessage::new("bad", "x")], false)
        .unwrap_err();
    assert!(err.to_string().contains("no bad roles"), "{err}");
}

#[test]
fn malformed_tokenizer_json_is_an_error() {
    assert!(Tokenizer::from_json(b"{not json", &config(false), None).is_err());
}
