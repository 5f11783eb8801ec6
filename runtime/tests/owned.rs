//! `OwnedModel` / `OwnedSession` behave exactly like the borrowed `Model` / `Session` they are built on: the
//! same logits bit for bit across prefill, decode, sampling, truncation and reset, whatever holds the model
//! (a reference, an `Arc`) or the arena (a `Vec`, a borrowed slice); and storage that changes under them is
//! refused with a typed error instead of being misread.

mod common;

use std::cell::Cell;
use std::ops::{Deref, DerefMut};
use std::rc::Rc;
use std::sync::Arc;

use common::{build, tokens, Spec};
use tern_format::{AlignedBytes, Architecture, FormatError, ModelView, ParseOptions};
use tern_runtime::{Model, OwnedModel, OwnedSession, RuntimeError, Sampler, SamplingParams, Session, SessionOptions};

fn spec(arch: Architecture) -> Spec {
    let mut s = Spec::small(arch);
    s.layers = 2;
    s.context = 48;
    s
}

/// Logits after each step of a fixed script (prefill, sampled decodes, truncate, reset), borrowed API.
fn script_borrowed(bytes: &[u8], opts: SessionOptions, prompt: &[u32]) -> (Vec<Vec<f32>>, Vec<u32>) {
    let model = Model::new(ModelView::parse(bytes).unwrap()).unwrap();
    let mut arena = vec![0u8; opts.arena_bytes(model.config()).unwrap()];
    let mut s = Session::new(&model, &mut arena, opts).unwrap();
    let mut sampler = Sampler::new(SamplingParams::default());
    let mut logits = vec![s.prefill(prompt).unwrap().to_vec()];
    let mut ids = Vec::new();
    for _ in 0..6 {
        let t = s.sample(&mut sampler).unwrap();
        ids.push(t);
        logits.push(s.decode(t).unwrap().to_vec());
    }
    s.truncate(prompt.len() + 2);
    logits.push(s.decode(ids[0]).unwrap().to_vec());
    s.reset();
    logits.push(s.prefill(&prompt[..3]).unwrap().to_vec());
    ids.push(s.pos() as u32);
    (logits, ids)
}

/// The same script through `OwnedSession`.
fn script_owned<S, M, A>(s: &mut OwnedSession<M, A>, prompt: &[u32]) -> (Vec<Vec<f32>>, Vec<u32>)
where
    S: Deref<Target = [u8]>,
    M: Deref<Target = OwnedModel<S>>,
    A: DerefMut<Target = [u8]>,
{
    let vocab = s.model().config().vocab_size as usize;
    let mut row = vec![0f32; vocab];
    let mut last = |s: &mut OwnedSession<M, A>| {
        assert_eq!(s.copy_last_logits(&mut row).unwrap(), vocab);
        row.clone()
    };
    let mut sampler = Sampler::new(SamplingParams::default());
    s.prefill(prompt).unwrap();
    let mut logits = vec![last(s)];
    let mut ids = Vec::new();
    for _ in 0..6 {
        let t = s.sample(&mut sampler).unwrap();
        ids.push(t);
        s.decode(t).unwrap();
        logits.push(last(s));
    }
    s.truncate(prompt.len() + 2);
    s.decode(ids[0]).unwrap();
    logits.push(last(s));
    s.reset();
    s.prefill(&prompt[..3]).unwrap();
    logits.push(last(s));
    ids.push(s.pos() as u32);
    (logits, ids)
}

#[test]
fn owned_session_matches_borrowed_session_bit_for_bit() {
    for arch in [Architecture::Llama, Architecture::BitNetB158] {
        let sp = spec(arch);
        let bytes = build(&sp, 5);
        let prompt = tokens(11, sp.vocab, 9);
        let opts = SessionOptions::new(48, 4);
        let want = script_borrowed(&bytes, opts, &prompt);

        // Model behind a reference, arena in a Vec.
        let model = OwnedModel::new(bytes.clone(), ParseOptions::default()).unwrap();
        let n = model.arena_bytes(&opts).unwrap();
        let mut s = OwnedSession::new(&model, vec![0u8; n], opts).unwrap();
        assert_eq!(script_owned(&mut s, &prompt), want, "{arch:?}, &OwnedModel + Vec");

        // Model shared through an Arc, arena a borrowed slice with an odd start (carving realigns).
        let shared = Arc::new(OwnedModel::new(bytes.clone(), ParseOptions::default()).unwrap());
        let mut buf = vec![0xA5u8; n + 3];
        let mut s = OwnedSession::new(Arc::clone(&shared), &mut buf[3..], opts).unwrap();
        assert_eq!(
            script_owned(&mut s, &prompt),
            want,
            "{arch:?}, Arc<OwnedModel> + &mut [u8]"
        );
        assert_eq!(s.pos(), 3);
        assert_eq!(s.remaining(), 45);
    }
}

#[test]
fn owned_types_pass_on_typed_errors_and_keep_their_state() {
    let sp = spec(Architecture::Llama);
    let bytes = build(&sp, 2);
    let model = OwnedModel::new(bytes, ParseOptions::default()).unwrap();
    let opts = SessionOptions::new(16, 4);
    let n = model.arena_bytes(&opts).unwrap();
    assert!(matches!(
        OwnedSession::new(&model, vec![0u8; n - 1], opts),
        Err(RuntimeError::ArenaTooSmall { .. })
    ));
    let mut s = OwnedSession::new(&model, vec![0u8; n], opts).unwrap();
    let mut sampler = Sampler::new(SamplingParams::greedy());
    assert_eq!(s.sample(&mut sampler), Err(RuntimeError::NoLogits));
    assert_eq!(
        s.prefill(&[1, sp.vocab]),
        Err(RuntimeError::UnknownToken {
            token: sp.vocab,
            vocab: sp.vocab
        })
    );
    assert_eq!(
        s.prefill(&[1; 17]),
        Err(RuntimeError::ContextFull {
            pos: 0,
            requested: 17,
            max: 16
        })
    );
    s.prefill(&[1, 2, 3]).unwrap();
    let mut short = vec![0f32; sp.vocab as usize - 1];
    assert!(matches!(
        s.copy_last_logits(&mut short),
        Err(RuntimeError::BadOptions(_))
    ));
    assert_eq!(s.pos(), 3);
    assert_eq!(
        s.set_threads(0),
        Err(RuntimeError::BadOptions("threads must be at least 1"))
    );
    s.set_threads(2).unwrap();
    assert_eq!(s.options().threads, 2);
    s.decode(4).unwrap();
    assert_eq!(s.pos(), 4);

    let mut garbage = AlignedBytes::from_slice(&[7u8; 4096]);
    assert_eq!(
        OwnedModel::new(garbage.clone(), ParseOptions::default()).err(),
        Some(RuntimeError::Format(FormatError::BadMagic))
    );
    garbage[..8].copy_from_slice(&model.bytes()[..8]);
    assert!(OwnedModel::new(garbage, ParseOptions::default()).is_err());
}

/// Storage that can be switched, from outside, to other bytes.
struct Switchable {
    a: AlignedBytes,
    b: AlignedBytes,
    use_b: Rc<Cell<bool>>,
}

impl Deref for Switchable {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.use_b.get() {
            &self.b
        } else {
            &self.a
        }
    }
}

impl DerefMut for Switchable {
    fn deref_mut(&mut self) -> &mut [u8] {
        if self.use_b.get() {
            &mut self.b
        } else {
            &mut self.a
        }
    }
}

#[test]
fn changed_model_bytes_and_moved_arenas_are_refused() {
    let sp = spec(Architecture::Llama);
    let mut other = sp.clone();
    other.ffn = 224;
    let flag = Rc::new(Cell::new(false));
    let storage = Switchable {
        a: build(&sp, 1),
        b: build(&other, 1),
        use_b: Rc::clone(&flag),
    };
    let model = OwnedModel::new(storage, ParseOptions::default()).unwrap();
    let opts = SessionOptions::new(16, 4);
    let n = model.arena_bytes(&opts).unwrap();
    let mut s = OwnedSession::new(&model, vec![0u8; n], opts).unwrap();
    s.prefill(&[1, 2]).unwrap();
    flag.set(true);
    assert_eq!(s.decode(3).err(), Some(RuntimeError::ModelChanged));
    flag.set(false);
    s.decode(3).unwrap();
    assert_eq!(s.pos(), 3);

    let arena_flag = Rc::new(Cell::new(false));
    let arena = Switchable {
        a: AlignedBytes::from_slice(&vec![0u8; n]),
        b: AlignedBytes::from_slice(&vec![0u8; n]),
        use_b: Rc::clone(&arena_flag),
    };
    let mut s = OwnedSession::new(&model, arena, opts).unwrap();
    s.prefill(&[1, 2]).unwrap();
    arena_flag.set(true);
    assert_eq!(s.decode(3).err(), Some(RuntimeError::ArenaMoved));
    assert_eq!(s.pos(), 2);
}
