//! Greedy generation is identical across runs, thread counts and prefill batch sizes — down to the bits of
//! every logit — and seeded sampling is reproducible.
//!
//! The sessions split every loop as far as its columns allow (`set_min_work_per_thread(0)`: these models are
//! far below the default threshold), and each run checks that the loops were cut into as many tasks as threads
//! (the widest loops — FFN 160 rows, vocabulary 301 — have 10 and 19 tiles of 16 rows, more than the 7
//! threads asked for at most) and that worker threads, not only the caller, ran some of them.

mod common;

use common::{build, tokens, Dense, Spec};
use tern_format::{Architecture, ModelView, ScaleKind};
use tern_runtime::{Model, Sampler, SamplingParams, Session, SessionOptions};

/// Prefills `prompt`, then generates `n` tokens; returns the tokens and the bits of every logit seen.
fn generate(
    model: &Model<'_>,
    opts: SessionOptions,
    prompt: &[u32],
    n: usize,
    params: SamplingParams,
) -> (Vec<u32>, Vec<u32>) {
    generate_in(model, opts, prompt, n, params, 0)
}

/// Most tasks a loop is split into with `threads` threads on these models.
fn expected_tasks(threads: usize) -> usize {
    threads.min(10)
}

/// `generate` in an arena pre-filled with `fill` (0xFF makes every f32 a NaN): sessions must not read
/// anything they did not write.
fn generate_in(
    model: &Model<'_>,
    opts: SessionOptions,
    prompt: &[u32],
    n: usize,
    params: SamplingParams,
    fill: u8,
) -> (Vec<u32>, Vec<u32>) {
    let mut arena = vec![fill; opts.arena_bytes(model.config()).unwrap()];
    let mut s = Session::new(model, &mut arena, opts).unwrap();
    s.set_min_work_per_thread(0);
    let mut sampler = Sampler::new(params);
    let mut bits: Vec<u32> = s.prefill(prompt).unwrap().iter().map(|v| v.to_bits()).collect();
    assert_eq!(s.threads(), opts.threads);
    assert_eq!(
        s.max_tasks_last_pass(),
        expected_tasks(opts.threads),
        "{} threads: the prefill was not split across all of them",
        opts.threads
    );
    let mut out = Vec::new();
    for _ in 0..n {
        let t = s.sample(&mut sampler).unwrap();
        out.push(t);
        bits.extend(s.decode(t).unwrap().iter().map(|v| v.to_bits()));
        assert_eq!(
            s.max_tasks_last_pass(),
            expected_tasks(opts.threads),
            "{} threads: a decode step was not split across all of them",
            opts.threads
        );
    }
    if opts.threads > 1 {
        assert!(
            s.worker_tasks() > 0,
            "{} threads: the workers never ran a task",
            opts.threads
        );
    }
    (out, bits)
}

fn models() -> Vec<(Spec, tern_format::AlignedBytes)> {
    let mut llama = Spec::small(Architecture::Llama);
    llama.scales = vec![ScaleKind::PerGroup(64)];
    let mut bitnet = Spec::small(Architecture::BitNetB158);
    bitnet.head = None;
    bitnet.embedding = Dense::Int8;
    vec![(llama.clone(), build(&llama, 21)), (bitnet.clone(), build(&bitnet, 22))]
}

#[test]
fn greedy_is_identical_across_runs_threads_and_batch_sizes() {
    for (spec, bytes) in models() {
        let model = Model::new(ModelView::parse(&bytes).unwrap()).unwrap();
        let prompt = tokens(19, spec.vocab, 5);
        let base = generate(
            &model,
            SessionOptions::new(64, 8),
            &prompt,
            24,
            SamplingParams::greedy(),
        );
        assert_eq!(base.0.len(), 24);
        let again = generate(
            &model,
            SessionOptions::new(64, 8),
            &prompt,
            24,
            SamplingParams::greedy(),
        );
        assert_eq!(base, again, "second run differs");
        let dirty = generate_in(
            &model,
            SessionOptions::new(64, 8),
            &prompt,
            24,
            SamplingParams::greedy(),
            0xFF,
        );
        assert!(dirty == base, "a NaN-filled arena changes the result");
        for threads in [2, 3, 4, 7] {
            let opts = SessionOptions::new(64, 8).with_threads(threads);
            let t = generate(&model, opts, &prompt, 24, SamplingParams::greedy());
            assert!(t == base, "{threads} threads differ");
        }
        for batch in [1, 5, 19, 32] {
            for threads in [1, 2] {
                let opts = SessionOptions::new(64, batch).with_threads(threads);
                let t = generate(&model, opts, &prompt, 24, SamplingParams::greedy());
                assert!(t == base, "batch {batch} threads {threads} differ");
            }
        }
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    for (spec, bytes) in models() {
        let model = Model::new(ModelView::parse(&bytes).unwrap()).unwrap();
        let prompt = tokens(7, spec.vocab, 9);
        let params = SamplingParams {
            temperature: 8.0,
            top_k: 0,
            top_p: 0.98,
            min_p: 0.0,
            repeat_penalty: 1.05,
            repeat_last_n: 16,
            seed: 42,
        };
        let a = generate(&model, SessionOptions::new(64, 8), &prompt, 30, params);
        let b = generate(&model, SessionOptions::new(64, 4).with_threads(3), &prompt, 30, params);
        assert_eq!(a, b);
        let c = generate(
            &model,
            SessionOptions::new(64, 8),
            &prompt,
            30,
            SamplingParams { seed: 43, ..params },
        );
        assert_ne!(a.0, c.0, "different seeds gave the same 30 tokens");
    }
}
