//! The forward pass's elementwise functions against f64.

use tern_runtime::ops;

#[test]
fn exp_is_within_two_ulp_of_f64() {
    let mut worst = 0.0f64;
    let n = 2_000_000;
    for i in 0..=n {
        let x = -87.0 + 175.0 * i as f32 / n as f32;
        let got = f64::from(ops::exp(x));
        let want = f64::from(x).exp();
        // One ulp of the f32 result, relative: 2^-23.
        let err = ((got - want) / want).abs() / f64::from(f32::EPSILON);
        worst = worst.max(err);
    }
    println!("worst error {worst:.2} ulp");
    assert!(worst <= 2.0, "exp is off by {worst:.2} ulp");
    assert_eq!(ops::exp(0.0), 1.0);
    assert!(ops::exp(f32::NAN).is_nan());
    // Clamped ends: finite and normal, and monotone into the clamp.
    assert!(ops::exp(1000.0).is_finite() && ops::exp(1000.0) >= ops::exp(88.0));
    assert!(ops::exp(-1000.0) > 0.0 && ops::exp(-1000.0).is_normal());
    assert!(ops::exp(f32::NEG_INFINITY) <= ops::exp(-87.0));
}

#[test]
fn softmax_and_swiglu_match_f64() {
    let x: Vec<f32> = (0..300).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3).collect();
    let mut p = x.clone();
    ops::softmax(&mut p);
    let max = x.iter().cloned().fold(f64::NEG_INFINITY, |m, v| m.max(f64::from(v)));
    let z: f64 = x.iter().map(|&v| (f64::from(v) - max).exp()).sum();
    for (&pi, &xi) in p.iter().zip(&x) {
        let want = (f64::from(xi) - max).exp() / z;
        assert!((f64::from(pi) - want).abs() <= 1e-6 * want + 1e-12, "{pi} vs {want}");
    }
    let up: Vec<f32> = (0..300).map(|i| (i % 7) as f32 * 0.5 - 1.5).collect();
    let mut g = x.clone();
    ops::swiglu(&mut g, &up);
    for ((&gi, &xi), &ui) in g.iter().zip(&x).zip(&up) {
        let xi = f64::from(xi);
        let want = xi / (1.0 + (-xi).exp()) * f64::from(ui);
        assert!(
            (f64::from(gi) - want).abs() <= 1e-6 * want.abs() + 1e-30,
            "{gi} vs {want}"
        );
    }
}
