//! The tokenizer embedded in a model (feature `std`): encoding with the model's BOS policy, streaming-safe
//! decoding, stop tokens and the chat template.
//!
//! Encoding never lets the tokenizer add special tokens itself; BOS is prepended exactly when the model's
//! config says `add_bos`, so the runtime, `tern perplexity` and llama.cpp agree on the token sequence.

use std::fmt;

use minijinja::{Environment, ErrorKind, Value};
use tern_format::{ModelConfig, ModelView, NO_TOKEN};

/// Loading, encoding, decoding or templating failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerError(pub String);

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tokenizer: {}", self.0)
    }
}

impl std::error::Error for TokenizerError {}

fn err(e: impl fmt::Display) -> TokenizerError {
    TokenizerError(e.to_string())
}

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Token texts that end an assistant turn in common chat formats (used as stop tokens when present).
const END_OF_TURN: [&str; 6] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "</s>",
    "<end_of_turn>",
];

/// ChatML, used for models that embed no template but have its special tokens.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + \
                      '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
/// Plain-text fallback.
const PLAIN: &str = "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n\
                     {% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    stop: Vec<u32>,
    template: String,
    /// The decoder maps GPT-2's byte symbols back to bytes (byte-level BPE).
    byte_level: bool,
}

fn has_byte_level(d: &tokenizers::DecoderWrapper) -> bool {
    use tokenizers::DecoderWrapper as D;
    match d {
        D::ByteLevel(_) => true,
        D::Sequence(s) => s.get_decoders().iter().any(has_byte_level),
        _ => false,
    }
}

/// GPT-2's byte-level alphabet: the symbol of every byte (printable Latin-1 bytes stand for themselves, the
/// others map to U+0100 onwards in byte order).
fn byte_of_symbol(c: char) -> Option<u8> {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let c = u32::from(c);
    if c < 256 {
        return if printable(c) { u8::try_from(c).ok() } else { None };
    }
    let n = c - 256;
    (0u32..256)
        .filter(|&b| !printable(b))
        .nth(n as usize)
        .and_then(|b| u8::try_from(b).ok())
}

/// `<0xNN>` (a SentencePiece byte token) → the byte.
fn byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Tokenizer {
    /// The tokenizer and chat template embedded in a model file.
    pub fn from_model(view: &ModelView<'_>) -> Result<Self, TokenizerError> {
        let data = view
            .tokenizer()
            .ok_or_else(|| TokenizerError("the model file embeds no tokenizer".into()))?;
        Self::from_json(data.bytes, view.config(), view.chat_template())
    }

    /// A Hugging Face `tokenizer.json` with the model's special-token ids and optional chat template.
    pub fn from_json(json: &[u8], config: &ModelConfig, chat_template: Option<&str>) -> Result<Self, TokenizerError> {
        let id = |t: u32| (t != NO_TOKEN).then_some(t);
        Self::new(
            json,
            id(config.bos_token),
            id(config.eos_token),
            config.add_bos,
            chat_template,
        )
    }

    /// A Hugging Face `tokenizer.json` with BOS/EOS ids, whether prompts start with BOS and an optional chat
    /// template: for a vocabulary without a model (`tern tokenize` on a vocabulary-only GGUF).
    pub fn new(
        json: &[u8],
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
        chat_template: Option<&str>,
    ) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_bytes(json).map_err(err)?;
        let mut stop: Vec<u32> = eos.into_iter().collect();
        for t in END_OF_TURN {
            if let Some(i) = inner.token_to_id(t) {
                if !stop.contains(&i) {
                    stop.push(i);
                }
            }
        }
        let template = match chat_template {
            Some(t) if !t.trim().is_empty() => t.to_string(),
            _ if inner.token_to_id("<|im_start|>").is_some() => CHATML.to_string(),
            _ => PLAIN.to_string(),
        };
        let byte_level = inner.get_decoder().is_some_and(has_byte_level);
        Ok(Self {
            inner,
            bos,
            eos,
            add_bos,
            stop,
            template,
            byte_level,
        })
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    /// Whether prompts get a BOS token (the model config's `add_bos`).
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }
    /// EOS plus the end-of-turn tokens of common chat formats present in the vocabulary.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop
    }
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop.contains(&id)
    }
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`, without BOS. Special-token texts in `text` (e.g. `<|im_start|>`) map to their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode(text, false).map_err(err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a prompt: BOS first when the model adds one.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::new();
        if let (true, Some(b)) = (self.add_bos, self.bos) {
            ids.push(b);
        }
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// The bytes one token stands for, as llama.cpp's `token_to_piece` gives them (with special tokens shown):
    /// a byte-level symbol string mapped back to its bytes, a SentencePiece piece with `▁` as a space and
    /// `<0xNN>` as its byte, an added token's text as is. Pieces need not be valid UTF-8 (part of a character).
    pub fn piece(&self, id: u32) -> Option<Vec<u8>> {
        let tok = self.inner.id_to_token(id)?;
        if self
            .inner
            .get_added_vocabulary()
            .get_added_tokens_decoder()
            .contains_key(&id)
        {
            return Some(tok.into_bytes());
        }
        if self.byte_level {
            if let Some(bytes) = tok.chars().map(byte_of_symbol).collect::<Option<Vec<u8>>>() {
                return Some(bytes);
            }
            return Some(tok.into_bytes());
        }
        if let Some(b) = byte_token(&tok) {
            return Some(vec![b]);
        }
        Some(tok.replace('\u{2581}', " ").into_bytes())
    }

    /// Text of `ids`; special tokens are dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner.decode(ids, skip_special).map_err(err)
    }

    /// A streaming decoder; `context` (e.g. the prompt) lets the first pieces get their spacing right.
    pub fn stream<'t>(&'t self, context: &[u32]) -> StreamDecoder<'t> {
        let ctx = &context[context.len().saturating_sub(STREAM_CONTEXT)..];
        StreamDecoder {
            tok: self,
            ids: ctx.to_vec(),
            prefix: 0,
            read: ctx.len(),
        }
    }

    /// Renders the chat template (the model's, else ChatML or a plain fallback) for `messages`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let mut env = Environment::new();
        env.add_function("raise_exception", |msg: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.set_unknown_method_callback(python_methods);
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_iter([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let token_text = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i)).unwrap_or_default();
        let ctx = Value::from_iter([
            ("messages", Value::from(msgs)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from(token_text(self.bos))),
            ("eos_token", Value::from(token_text(self.eos))),
        ]);
        env.render_str(&self.template, ctx).map_err(err)
    }
}

/// The few Python string methods Hugging Face chat templates call.
fn python_methods(
    _state: &minijinja::State<'_, '_>,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, minijinja::Error> {
    let unknown = || {
        Err(minijinja::Error::new(
            ErrorKind::UnknownMethod,
            format!("template calls unsupported method {method}"),
        ))
    };
    let Some(s) = value.as_str() else { return unknown() };
    let arg = |i: usize| args.get(i).and_then(|v| v.as_str()).unwrap_or("");
    Ok(match method {
        "strip" => Value::from(s.trim()),
        "lstrip" => Value::from(s.trim_start()),
        "rstrip" => Value::from(s.trim_end()),
        "lower" => Value::from(s.to_lowercase()),
        "upper" => Value::from(s.to_uppercase()),
        "startswith" => Value::from(s.starts_with(arg(0))),
        "endswith" => Value::from(s.ends_with(arg(0))),
        _ => return unknown(),
    })
}

/// Tokens of context a stream decoder keeps in front of new ones.
const STREAM_CONTEXT: usize = 5;

/// Turns tokens into text as they arrive, never emitting a partial UTF-8 character.
///
/// Multi-byte characters can span tokens (byte-level BPE). The decoder re-decodes a short window
/// (`prefix..`) and emits only the new text once it no longer ends in U+FFFD, the replacement character
/// that an incomplete sequence decodes to; decoding the window rather than single tokens also keeps the
/// spacing that SentencePiece-style decoders derive from the previous token.
pub struct StreamDecoder<'t> {
    tok: &'t Tokenizer,
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl StreamDecoder<'_> {
    /// Adds a token; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let prefix_text = self.tok.decode(&self.ids[self.prefix..self.read], true)?;
        let new_text = self.tok.decode(&self.ids[self.prefix..], true)?;
        if new_text.len() > prefix_text.len() && !new_text.ends_with('\u{FFFD}') {
            if let Some(piece) = new_text.get(prefix_text.len()..) {
                let piece = piece.to_string();
                self.prefix = self.read;
                self.read = self.ids.len();
                // Keep the window short: only ids from `prefix` on are ever decoded again.
                if self.prefix > 64 {
                    self.ids.drain(..self.prefix);
                    self.read -= self.prefix;
                    self.prefix = 0;
                }
                return Ok(piece);
            }
        }
        Ok(String::new())
    }

    /// Text still held back (an incomplete character at the end of the stream), decoded lossily.
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        let prefix_text = self.tok.decode(&self.ids[self.prefix..self.read], true)?;
        let all = self.tok.decode(&self.ids[self.prefix..], true)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(all.get(prefix_text.len()..).unwrap_or("").to_string())
    }
}
