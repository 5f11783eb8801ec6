// Weight quantizers (engine/quant/{hard,soft}.rs, formula for formula) and int8 activation fake quantization.
//
// Scale groups are runs of `group_len` weights. A group's sums are computed in f64 in two deterministic passes:
// `group_partial` (grid (groups, chunks_per_group): one partial per chunk of `chunk_len` weights) and
// `group_finish` (one thread per group: the partials in order, divided by group_len).

#define QUANT_EPS 1e-5

// mode 0: Σ|w|. mode 1: Σ g·(σ(z) − z·σ'(z)), z = w/a, a = max(mean[g], 1e-5) (the soft quantizer's scale term).
__device__ __forceinline__ void soft_code(float z, float t, float* sigma_out, float* dsigma_out);

extern "C" __global__ void group_partial(const float* __restrict__ w, const float* __restrict__ g,
                                         const double* __restrict__ mean, u64 group_len, u64 chunk_len,
                                         u32 chunks_per_group, float temperature, u32 mode,
                                         double* __restrict__ partial) {
    const u32 group = blockIdx.x, chunk = blockIdx.y;
    const u64 base = (u64)group * group_len;
    const u64 c0 = (u64)chunk * chunk_len;
    const u64 c1 = min(group_len, c0 + chunk_len);
    float a = 0.0f;
    if (mode == 1) a = (float)fmax(mean[group], QUANT_EPS);
    double acc = 0.0;
    for (u64 i = c0 + threadIdx.x; i < c1; i += blockDim.x) {
        const float wi = w[base + i];
        if (mode == 0) {
            acc += (double)fabsf(wi);
        } else {
            const float z = wi / a;
            float s, ds;
            soft_code(z, temperature, &s, &ds);
            acc += (double)(g[base + i] * (s - z * ds));
        }
    }
    acc = block_sum_d(acc);
    if (threadIdx.x == 0) partial[(u64)group * chunks_per_group + chunk] = acc;
}

extern "C" __global__ void group_finish(const double* __restrict__ partial, u32 chunks_per_group, u32 groups,
                                        u64 group_len, double* __restrict__ out) {
    const u32 group = blockIdx.x * blockDim.x + threadIdx.x;
    if (group >= groups) return;
    double acc = 0.0;
    for (u32 k = 0; k < chunks_per_group; ++k) acc += partial[(u64)group * chunks_per_group + k];
    out[group] = acc / (double)group_len;
}

// (σ_T(z), dσ_T/dz) for T > 0 with every exponent ≤ 0 (quant/soft.rs `soft_code`).
__device__ __forceinline__ void soft_code(float z, float t, float* sigma_out, float* dsigma_out) {
    const float x = fabsf(z);
    const float inv_t = 1.0f / t;
    const float e1 = expf(-(4.0f * x) * inv_t);
    const float b = (1.0f - 2.0f * x) * inv_t;
    float sigma, dsdu;
    if (b <= 0.0f) {
        const float eb = expf(b);
        const float den = 1.0f + e1 + eb;
        sigma = (1.0f - e1) / den;
        dsdu = (4.0f * e1 + eb * (1.0f + e1)) / (den * den);
    } else {
        const float nb = expf(-b);
        const float den = nb * (1.0f + e1) + 1.0f;
        sigma = nb * (1.0f - e1) / den;
        dsdu = (4.0f * e1 * nb * nb + nb * (1.0f + e1)) / (den * den);
    }
    *sigma_out = z < 0.0f ? -sigma : sigma;
    *dsigma_out = 2.0f * inv_t * dsdu;
}

__device__ __forceinline__ float ternary_code(float w, float a) { return clamp_nan(round_even(w / a), -1.0f, 1.0f); }

// BitNet b1.58 absmean: out = clamp(round(w/a), −1, 1)·a, a = max(mean|w|, 1e-5) of the weight's group.
extern "C" __global__ void quant_hard(float* __restrict__ out, const float* __restrict__ w,
                                      const double* __restrict__ mean, u64 group_len, u64 n) {
    for (u64 i = global_thread(); i < n; i += grid_stride()) {
        const float a = (float)fmax(mean[i / group_len], QUANT_EPS);
        out[i] = ternary_code(w[i], a) * a;
    }
}

// Hestia: out = (1 − λ)·w + λ·a·σ_T(w/a); T = 0 is the hard code.
extern "C" __global__ void quant_soft(float* __restrict__ out, const float* __restrict__ w,
                                      const double* __restrict__ mean, u64 group_len, u64 n, float temperature,
                                      float pressure) {
    const float keep = 1.0f - pressure;
    for (u64 i = global_thread(); i < n; i += grid_stride()) {
        const float a = (float)fmax(mean[i / group_len], QUANT_EPS);
        const float wi = w[i];
        if (temperature == 0.0f) {
            out[i] = keep * wi + pressure * (ternary_code(wi, a) * a);
        } else {
            float s, ds;
            soft_code(wi / a, temperature, &s, &ds);
            out[i] = keep * wi + pressure * (s * a);
        }
    }
}

// In place, T > 0: G ← (1 − λ)·G + λ·(G·σ'(z) + sign(w)·r), r = Σ_group G·(σ − z·σ')/n (`term`, already divided)
// where the scale is not floored (mean > 1e-5), else 0.
extern "C" __global__ void quant_soft_bwd(float* __restrict__ grad, const float* __restrict__ w,
                                          const double* __restrict__ mean, const double* __restrict__ term,
                                          u64 group_len, u64 n, float temperature, float pressure) {
    const float keep = 1.0f - pressure;
    for (u64 i = global_thread(); i < n; i += grid_stride()) {
        const u64 group = i / group_len;
        const double m = mean[group];
        const float a = (float)fmax(m, QUANT_EPS);
        const float r = m > QUANT_EPS ? (float)term[group] : 0.0f;
        const float wi = w[i];
        float s, ds;
        soft_code(wi / a, temperature, &s, &ds);
        const float sign = wi > 0.0f ? 1.0f : (wi < 0.0f ? -1.0f : 0.0f);
        const float g = grad[i];
        grad[i] = keep * g + pressure * (g * ds + sign * r);
    }
}

// Per-row absmax int8: s = 127/max(max|x|, 1e-5), out = clamp(round(x·s), −128, 127)/s. One block per row.
extern "C" __global__ void fake_quant_int8_rows(float* __restrict__ out, const float* __restrict__ x, u32 cols) {
    const u64 row = blockIdx.x;
    const float* xr = x + row * cols;
    float* yr = out + row * cols;
    float m = 0.0f;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, fabsf(xr[c]));
    m = block_max_f(m);
    const float scale = 127.0f / fmaxf(m, (float)QUANT_EPS);
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = clamp_nan(round_even(xr[c] * scale), -128.0f, 127.0f) / scale;
}
