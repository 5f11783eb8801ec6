//! Bad models, options and inputs give typed errors, never a panic, and leave the session usable.

mod common;

use common::{build, shape, tensors, write, Spec};
use tern_format::{Architecture, FormatError, ModelView, Role, TensorData, TernaryLayout};
use tern_runtime::{
    required_arena_bytes, Logits, Model, RuntimeError, Sampler, SamplingParams, Session, SessionOptions,
};

fn llama() -> Spec {
    let mut s = Spec::small(Architecture::Llama);
    s.layers = 2;
    s.context = 32;
    s
}

#[test]
fn bad_inputs_are_typed_errors_and_leave_the_session_intact() {
    let spec = llama();
    let bytes = build(&spec, 1);
    let model = Model::new(ModelView::parse(&bytes).unwrap()).unwrap();
    let opts = SessionOptions::new(32, 8);
    let mut arena = vec![0u8; opts.arena_bytes(model.config()).unwrap()];
    let mut s = Session::new(&model, &mut arena, opts).unwrap();

    assert_eq!(s.prefill(&[]), Err(RuntimeError::EmptyInput));
    assert_eq!(s.forward(&[], Logits::Last), Err(RuntimeError::EmptyInput));
    let long = vec![3u32; 33];
    assert_eq!(
        s.prefill(&long),
        Err(RuntimeError::ContextFull {
            pos: 0,
            requested: 33,
            max: 32
        })
    );
    assert_eq!(
        s.prefill(&[5, 301, 7]),
        Err(RuntimeError::UnknownToken { token: 301, vocab: 301 })
    );
    assert_eq!(
        s.decode(u32::MAX),
        Err(RuntimeError::UnknownToken {
            token: u32::MAX,
            vocab: 301
        })
    );
    assert_eq!(
        s.forward(&[1; 9], Logits::All),
        Err(RuntimeError::BatchTooLarge { len: 9, max: 8 })
    );
    assert_eq!(
        s.sample(&mut Sampler::new(SamplingParams::greedy())),
        Err(RuntimeError::NoLogits)
    );
    assert_eq!(s.last_logits(), Err(RuntimeError::NoLogits));
    assert_eq!(s.pos(), 0, "a refused call changes nothing");

    // The session still works, and refuses the position past the context.
    s.prefill(&[1u32; 30]).unwrap();
    s.decode(4).unwrap();
    s.decode(4).unwrap();
    assert_eq!(s.pos(), 32);
    assert_eq!(
        s.decode(4),
        Err(RuntimeError::ContextFull {
            pos: 32,
            requested: 1,
            max: 32
        })
    );
    assert!(s.last_logits().is_ok(), "logits of the last good step are kept");
    s.reset();
    s.prefill(&[2, 3]).unwrap();
    assert_eq!(
        s.set_threads(0),
        Err(RuntimeError::BadOptions("threads must be at least 1"))
    );
}

#[test]
fn arena_and_options_are_checked() {
    let spec = llama();
    let bytes = build(&spec, 2);
    let model = Model::new(ModelView::parse(&bytes).unwrap()).unwrap();
    let c = model.config();
    let need = required_arena_bytes(c, 32, 4).unwrap();
    let mut small = vec![0u8; need - 1];
    let opts = SessionOptions::new(32, 4);
    assert!(matches!(
        Session::new(&model, &mut small, opts),
        Err(RuntimeError::ArenaTooSmall { needed, got }) if needed == need && got == need - 1
    ));
    // Exactly the required size works whatever the slice's alignment.
    let mut big = vec![0u8; need + 64];
    for off in [0usize, 1, 3, 17, 63] {
        Session::new(&model, &mut big[off..off + need], opts).unwrap();
    }
    for (ctx, batch, what) in [
        (0, 4, "max_context and max_batch must be at least 1"),
        (32, 0, "max_context and max_batch must be at least 1"),
        (33, 4, "max_context exceeds the model's context length"),
    ] {
        assert_eq!(required_arena_bytes(c, ctx, batch), Err(RuntimeError::BadOptions(what)));
    }
    assert_eq!(
        SessionOptions::new(32, 4).with_threads(0).arena_bytes(c),
        Err(RuntimeError::BadOptions("threads must be at least 1"))
    );
}

/// Rewrites the architecture code in a valid file's CONFIG section and fixes up both checksums.
fn with_arch_code(bytes: &[u8], code: u32) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let count = u32::from_le_bytes(b[24..28].try_into().unwrap()) as usize;
    for i in 0..count {
        let e = 64 + 24 * i;
        if u32::from_le_bytes(b[e..e + 4].try_into().unwrap()) == 1 {
            let off = u64::from_le_bytes(b[e + 8..e + 16].try_into().unwrap()) as usize;
            let len = u64::from_le_bytes(b[e + 16..e + 24].try_into().unwrap()) as usize;
            b[off..off + 4].copy_from_slice(&code.to_le_bytes());
            let crc = crc32fast::hash(&b[off..off + len]);
            b[e + 4..e + 8].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..40]);
    h.update(&b[64..64 + 24 * count]);
    let crc = h.finalize();
    b[40..44].copy_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn unsupported_architecture_is_a_typed_error() {
    let bytes = build(&llama(), 3);
    let patched = tern_format::AlignedBytes::from_slice(&with_arch_code(&bytes, 7));
    let err = ModelView::parse(&patched).map(|_| ()).map_err(RuntimeError::from);
    assert_eq!(err, Err(RuntimeError::UnsupportedArchitecture(7)));

    // Through the std loader, from a file on disk.
    let dir = std::env::temp_dir().join(format!("tern-runtime-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("arch7.tern");
    std::fs::write(&path, &*patched).unwrap();
    let file = tern_runtime::load::map(&path).unwrap();
    match tern_runtime::load::model(&file, true) {
        Err(tern_runtime::load::LoadError::Model(RuntimeError::UnsupportedArchitecture(7))) => {}
        other => panic!("expected UnsupportedArchitecture(7), got {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        tern_runtime::load::map(dir.join("missing.tern")),
        Err(tern_runtime::load::LoadError::Map(_))
    ));
    std::fs::remove_dir_all(&dir).ok();
}

fn model_error(spec: &Spec, edit: impl FnOnce(&mut Vec<TensorData>)) -> RuntimeError {
    let mut t = tensors(spec, 4);
    edit(&mut t);
    let bytes = write(spec.config(), t);
    let view = ModelView::parse(&bytes).unwrap();
    Model::new(view).map(|_| ()).unwrap_err()
}

#[test]
fn missing_tensors_wrong_shapes_and_types_are_typed_errors() {
    let spec = llama();
    let e = model_error(&spec, |t| t.retain(|x| x.name != "blk.1.ffn_up.weight"));
    assert_eq!(
        e,
        RuntimeError::MissingTensor {
            role: Role::FfnUp,
            layer: Some(1)
        }
    );
    let e = model_error(&spec, |t| t.retain(|x| x.role != Role::Output));
    assert_eq!(
        e,
        RuntimeError::MissingTensor {
            role: Role::Output,
            layer: None
        }
    );
    let e = model_error(&spec, |t| t.retain(|x| x.role != Role::TokenEmbedding));
    assert_eq!(
        e,
        RuntimeError::MissingTensor {
            role: Role::TokenEmbedding,
            layer: None
        }
    );

    // attn_k with 2 KV heads' rows instead of 3.
    let e = model_error(&spec, |t| {
        let i = t.iter().position(|x| x.name == "blk.0.attn_k.weight").unwrap();
        t[i] = common::ternary(
            "blk.0.attn_k.weight",
            Role::AttnK,
            0,
            32,
            96,
            TernaryLayout::TwoBit,
            tern_format::ScaleKind::PerRow,
            &mut rand::SeedableRng::seed_from_u64(0),
        );
    });
    assert!(matches!(
        e,
        RuntimeError::WrongShape { role: Role::AttnK, layer: Some(0), expected: [48, 96], actual } if actual.dims() == [32, 96]
    ));

    // A norm stored as f16.
    let e = model_error(&spec, |t| {
        let i = t.iter().position(|x| x.name == "blk.1.ffn_norm.weight").unwrap();
        t[i] = TensorData::f16(
            "blk.1.ffn_norm.weight",
            Role::FfnNorm,
            Some(1),
            shape(&[96]),
            &[1.0; 96],
        );
    });
    assert_eq!(
        e,
        RuntimeError::WrongDtype {
            role: Role::FfnNorm,
            layer: Some(1),
            dtype: tern_format::ElementType::F16
        }
    );

    // A ternary embedding (rows must be dequantized for lookup).
    let e = model_error(&spec, |t| {
        let i = t.iter().position(|x| x.role == Role::TokenEmbedding).unwrap();
        let mut x = common::ternary(
            "token_embd.weight",
            Role::AttnQ,
            0,
            301,
            96,
            TernaryLayout::Base3,
            tern_format::ScaleKind::PerTensor,
            &mut rand::SeedableRng::seed_from_u64(0),
        );
        x.role = Role::TokenEmbedding;
        x.layer = None;
        t[i] = x;
    });
    assert!(matches!(
        e,
        RuntimeError::WrongDtype {
            role: Role::TokenEmbedding,
            ..
        }
    ));

    // BitNet needs its sub-norms.
    let bitnet = Spec::small(Architecture::BitNetB158);
    let e = model_error(&bitnet, |t| t.retain(|x| x.role != Role::FfnSubNorm));
    assert_eq!(
        e,
        RuntimeError::MissingTensor {
            role: Role::FfnSubNorm,
            layer: Some(0)
        }
    );
    // Errors render as one readable line.
    assert_eq!(e.to_string(), "missing tensor ffn_sub_norm of block 0");
    let fe: RuntimeError = FormatError::Truncated.into();
    assert_eq!(fe, RuntimeError::Format(FormatError::Truncated));
}
