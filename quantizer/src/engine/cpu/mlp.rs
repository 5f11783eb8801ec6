//! CPU kernels of the gated MLP activations (the math: [`crate::engine::layers::mlp`]).

use rayon::prelude::*;

use crate::engine::backend::GatedActivation;
use crate::engine::scalar::Float;

const ELEMS_PER_TASK: usize = 1 << 12;

#[inline(always)]
fn sigmoid<T: Float>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

pub(crate) fn gated_forward_cpu<T: Float>(out: &mut [T], gate: &[T], up: &[T], act: GatedActivation) {
    out.par_chunks_mut(ELEMS_PER_TASK)
        .zip(gate.par_chunks(ELEMS_PER_TASK))
        .zip(up.par_chunks(ELEMS_PER_TASK))
        .for_each(|((o, g), u)| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = match act {
                    GatedActivation::Silu => g * sigmoid(g) * u,
                    GatedActivation::ReluSquared => {
                        let r = g.max(T::ZERO);
                        r * r * u
                    }
                };
            }
        });
}

pub(crate) fn gated_backward_cpu<T: Float>(
    dgate: &mut [T],
    dup: &mut [T],
    dout: &[T],
    gate: &[T],
    up: &[T],
    act: GatedActivation,
) {
    let two = T::from_f64(2.0);
    dgate
        .par_chunks_mut(ELEMS_PER_TASK)
        .zip(dup.par_chunks_mut(ELEMS_PER_TASK))
        .zip(dout.par_chunks(ELEMS_PER_TASK))
        .zip(gate.par_chunks(ELEMS_PER_TASK).zip(up.par_chunks(ELEMS_PER_TASK)))
        .for_each(|(((dg, du), dy), (g, u))| {
            for i in 0..dg.len() {
                let (gv, uv, d) = (g[i], u[i], dy[i]);
                let (a, da) = match act {
                    GatedActivation::Silu => {
                        let s = sigmoid(gv);
                        (gv * s, s * (T::ONE + gv * (T::ONE - s)))
                    }
                    GatedActivation::ReluSquared => {
                        let r = gv.max(T::ZERO);
                        (r * r, two * r)
                    }
                };
                dg[i] = d * uv * da;
                du[i] = d * a;
            }
        });
}
