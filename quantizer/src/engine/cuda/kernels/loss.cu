// Losses, one block per row, fused with their gradients (layers/{cross_entropy,kl_div,mse}.rs). Row sums are in
// f64 like the CPU's. `mode`: 0 no gradient, 1 overwrite dlogits, 2 accumulate into it.

#define IGNORE_INDEX 0xffffffffu

// loss = logsumexp(z) − z[t]; ∂/∂z = scale·(softmax(z) − onehot(t)). Ignored rows: loss 0 (and zero gradient
// when overwriting). A target outside the vocabulary gives a NaN loss (the host rejects those first).
extern "C" __global__ void cross_entropy_fwd(float* __restrict__ losses, float* __restrict__ dlogits,
                                             const float* __restrict__ logits, const u32* __restrict__ targets,
                                             u32 vocab, double scale, u32 mode) {
    const u64 row = blockIdx.x;
    const float* z = logits + row * vocab;
    float* dz = dlogits ? dlogits + row * vocab : nullptr;
    const u32 t = targets[row];
    if (t == IGNORE_INDEX) {
        if (threadIdx.x == 0) losses[row] = 0.0f;
        if (mode == 1)
            for (u32 j = threadIdx.x; j < vocab; j += blockDim.x) dz[j] = 0.0f;
        return;
    }
    float m = NEG_INF_F;
    for (u32 j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, z[j]);
    const double max = (double)block_max_f(m);
    double sum = 0.0;
    for (u32 j = threadIdx.x; j < vocab; j += blockDim.x) {
        const double e = exp((double)z[j] - max);
        sum += e;
        // Overwrite: stash exp(z − max) in the gradient row (normalised below), as the CPU kernel does.
        if (mode == 1) dz[j] = (float)e;
    }
    sum = block_sum_d(sum);
    const double zt = t < vocab ? (double)z[t] : (double)NAN_F;
    if (threadIdx.x == 0) losses[row] = (float)(max + log(sum) - zt);
    if (mode == 1) {
        const double k = scale / sum;
        for (u32 j = threadIdx.x; j < vocab; j += blockDim.x) {
            float v = (float)((double)dz[j] * k);
            if (j == t) v -= (float)scale;
            dz[j] = v;
        }
    } else if (mode == 2) {
        const double lse = max + log(sum);
        for (u32 j = threadIdx.x; j < vocab; j += blockDim.x) {
            const double p = exp((double)z[j] - lse);
            dz[j] += (float)(scale * (p - (j == t ? 1.0 : 0.0)));
        }
    }
}

// loss = T²·Σ p·(log p − log q), p = softmax(teacher/T), q = softmax(z/T); ∂/∂z = g_scale·(q − p) with
// g_scale = scale·T.
extern "C" __global__ void kl_div_fwd(float* __restrict__ losses, float* __restrict__ dlogits,
                                      const float* __restrict__ logits, const float* __restrict__ teacher, u32 vocab,
                                      double temperature, double g_scale, u32 mode) {
    const u64 row = blockIdx.x;
    const float* z = logits + row * vocab;
    const float* zt = teacher + row * vocab;
    float* dz = dlogits ? dlogits + row * vocab : nullptr;
    const double inv_t = 1.0 / temperature;
    float ms = NEG_INF_F, mt = NEG_INF_F;
    for (u32 j = threadIdx.x; j < vocab; j += blockDim.x) {
        ms = fmaxf(ms, z[j]);
        mt = fmaxf(mt, zt[j]);
    }
    // max(x)/T = max(x/T) for T > 0: the CPU takes the max of the scaled values.
    const double max_s = (double)block_max_f(ms) * inv_t;
    const double max_t = (double)block_max_f(mt) * inv_t;
    double ss = 0.0, st = 0.0;
    for (u32 j = threadIdx.x; j < vocab; j += blockDim.x) {
        ss += exp((double)z[j] * inv_t - max_s);
        st += exp((double)zt[j] * inv_t - max_t);
    }
    const double lse_s = max_s + log(block_sum_d(ss));
    const double lse_t = max_t + log(block_sum_d(st));
    double kl = 0.0;
    for (u32 j = threadIdx.x; j < vocab; j += blockDim.x) {
        const double log_p = (double)zt[j] * inv_t - lse_t;
        const double log_q = (double)z[j] * inv_t - lse_s;
        const double p = exp(log_p);
        kl += p * (log_p - log_q);
        if (mode != 0) {
            const float g = (float)(g_scale * (exp(log_q) - p));
            dz[j] = mode == 1 ? g : dz[j] + g;
        }
    }
    kl = block_sum_d(kl);
    if (threadIdx.x == 0) losses[row] = (float)(temperature * temperature * kl);
}

// loss = Σ (y − t)²/d, d = cols or max(Σ t², 1e-12) (normalize); ∂/∂y = (2·scale/d)·(y − t).
extern "C" __global__ void mse_fwd(float* __restrict__ losses, float* __restrict__ dout, const float* __restrict__ out,
                                   const float* __restrict__ target, u32 cols, u32 normalize, double scale, u32 mode) {
    const u64 row = blockIdx.x;
    const float* y = out + row * cols;
    const float* t = target + row * cols;
    double sq = 0.0, tt = 0.0;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
        const double e = (double)y[c] - (double)t[c];
        sq += e * e;
        tt += (double)t[c] * (double)t[c];
    }
    sq = block_sum_d(sq);
    tt = block_sum_d(tt);
    const double d = normalize ? fmax(tt, 1e-12) : (double)cols;
    if (threadIdx.x == 0) losses[row] = (float)(sq / d);
    if (mode != 0) {
        float* dy = dout + row * cols;
        const float k = (float)(2.0 * scale / d);
        for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
            const float v = k * (y[c] - t[c]);
            dy[c] = mode == 1 ? v : dy[c] + v;
        }
    }
}
