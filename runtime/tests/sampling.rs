//! Sampling against direct computations: empirical frequencies of 40 000 seeded draws against the
//! probabilities each rule implies (|Δ| ≤ 0.012, five standard deviations of a frequency estimate at
//! p = 0.5), the supports each truncation allows, and the repetition penalty's arithmetic.

use tern_runtime::sampling::{apply_repeat_penalty, argmax};
use tern_runtime::{Rng, Sampler, SamplingParams};

const LOGITS: [f32; 6] = [2.0, 1.0, 0.5, 0.0, -1.0, 1.5];

fn softmax(l: &[f64]) -> Vec<f64> {
    let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.iter().map(|x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

fn frequencies(params: SamplingParams, logits: &[f32], history: &[u32]) -> Vec<f64> {
    let n = 40_000;
    let mut s = Sampler::new(params);
    let mut scratch = vec![0f32; logits.len()];
    let mut ids = vec![0u32; logits.len()];
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..n {
        counts[s.sample(logits, history, &mut scratch, &mut ids) as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / n as f64).collect()
}

fn assert_dist(got: &[f64], want: &[f64]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 0.012,
            "token {i}: frequency {g:.4}, probability {w:.4}"
        );
    }
}

fn params(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 7,
    }
}

/// Keeps the listed tokens' probabilities (temperature applied) and renormalises.
fn restricted(keep: &[usize], t: f64) -> Vec<f64> {
    let l: Vec<f64> = LOGITS.iter().map(|&x| f64::from(x) / t).collect();
    let p = softmax(&l);
    let z: f64 = keep.iter().map(|&i| p[i]).sum();
    (0..LOGITS.len())
        .map(|i| if keep.contains(&i) { p[i] / z } else { 0.0 })
        .collect()
}

#[test]
fn greedy_and_top1_pick_the_argmax() {
    let mut scratch = [0f32; 6];
    let mut ids = [0u32; 6];
    assert_eq!(argmax(&LOGITS), 0);
    assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1, "first of equal maxima");
    let mut g = Sampler::new(SamplingParams::greedy());
    assert_eq!(g.sample(&LOGITS, &[], &mut scratch, &mut ids), 0);
    // The penalty applies before the argmax: 2.0 / 2.5 = 0.8 drops token 0 below token 5 (1.5).
    let mut g = Sampler::new(SamplingParams {
        repeat_penalty: 2.5,
        ..SamplingParams::greedy()
    });
    assert_eq!(g.sample(&LOGITS, &[0], &mut scratch, &mut ids), 5);
    let mut top1 = Sampler::new(params(3.0, 1, 1.0, 0.0));
    for _ in 0..100 {
        assert_eq!(top1.sample(&LOGITS, &[], &mut scratch, &mut ids), 0);
    }
}

#[test]
fn temperature_sampling_follows_the_softmax() {
    for t in [1.0f32, 0.5, 2.0] {
        let got = frequencies(params(t, 0, 1.0, 0.0), &LOGITS, &[]);
        assert_dist(&got, &restricted(&[0, 1, 2, 3, 4, 5], f64::from(t)));
    }
}

#[test]
fn top_k_top_p_and_min_p_restrict_the_support() {
    // top-k 3: tokens 0 (2.0), 5 (1.5), 1 (1.0).
    let got = frequencies(params(1.0, 3, 1.0, 0.0), &LOGITS, &[]);
    assert_dist(&got, &restricted(&[0, 5, 1], 1.0));

    // top-p 0.7 over p = softmax(LOGITS): sorted 0 (.369), 5 (.224), 1 (.136) → cumulative .729 ≥ .7.
    let p = softmax(&LOGITS.map(f64::from));
    assert!(p[0] + p[5] < 0.7 && p[0] + p[5] + p[1] >= 0.7);
    let got = frequencies(params(1.0, 0, 0.7, 0.0), &LOGITS, &[]);
    assert_dist(&got, &restricted(&[0, 5, 1], 1.0));

    // min-p 0.3: keep p ≥ 0.3·p_max, i.e. logit ≥ 2 + ln 0.3 = 0.796 → tokens 0, 5, 1.
    let got = frequencies(params(1.0, 0, 1.0, 0.3), &LOGITS, &[]);
    assert_dist(&got, &restricted(&[0, 5, 1], 1.0));

    // Combined, then a temperature reshapes the survivors: top-k 4 then top-p 0.8 over the top-4
    // renormalised probabilities.
    let top4 = restricted(&[0, 5, 1, 2], 1.0);
    assert!(top4[0] + top4[5] < 0.8 && top4[0] + top4[5] + top4[1] >= 0.8);
    let got = frequencies(params(0.7, 4, 0.8, 0.0), &LOGITS, &[]);
    assert_dist(&got, &restricted(&[0, 5, 1], 0.7));
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_logits_once() {
    let mut l = LOGITS;
    apply_repeat_penalty(&mut l, &[0, 4, 4, 0, 9999], 2.0, 64);
    assert_eq!(l, [1.0, 1.0, 0.5, 0.0, -2.0, 1.5]);
    let mut l = LOGITS;
    apply_repeat_penalty(&mut l, &[0, 4, 1], 2.0, 1);
    assert_eq!(
        l,
        [2.0, 0.5, 0.5, 0.0, -1.0, 1.5],
        "only the last token is in the window"
    );
    let mut l = LOGITS;
    apply_repeat_penalty(&mut l, &[0, 1], 1.0, 64);
    assert_eq!(l, LOGITS);
}

#[test]
fn rng_is_reproducible_and_uniform() {
    let mut a = Rng::new(1);
    let mut b = Rng::new(1);
    let mut sum = 0.0f64;
    // Mean of 100 000 uniform draws: standard deviation 0.29 / 316 = 0.0009; allow five.
    for _ in 0..100_000 {
        let x = a.next_f32();
        assert_eq!(x, b.next_f32());
        assert!((0.0..1.0).contains(&x));
        sum += f64::from(x);
    }
    assert!((sum / 100_000.0 - 0.5).abs() < 0.0046, "mean {}", sum / 100_000.0);
    assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
}

#[test]
fn degenerate_inputs_do_not_panic() {
    let mut s = Sampler::new(SamplingParams::default());
    assert_eq!(s.sample(&[], &[], &mut [], &mut []), 0);
    let mut scratch = [0f32; 3];
    let mut ids = [0u32; 3];
    let nan = [f32::NAN, f32::NAN, f32::NAN];
    assert!(s.sample(&nan, &[], &mut scratch, &mut ids) < 3);
    let inf = [f32::NEG_INFINITY, 1.0, f32::INFINITY];
    assert!(s.sample(&inf, &[], &mut scratch, &mut ids) < 3);
}
