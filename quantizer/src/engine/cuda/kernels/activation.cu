// Gated MLP activations: out = act(gate)·up with act = silu (0) or relu² (1), and their backward.

__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

extern "C" __global__ void gated_fwd(float* __restrict__ out, const float* __restrict__ gate,
                                     const float* __restrict__ up, u32 act, u64 n) {
    for (u64 i = global_thread(); i < n; i += grid_stride()) {
        const float g = gate[i], u = up[i];
        float a;
        if (act == 0) {
            a = g * sigmoid_f(g);
        } else {
            const float r = fmaxf(g, 0.0f);
            a = r * r;
        }
        out[i] = a * u;
    }
}

extern "C" __global__ void gated_bwd(float* __restrict__ dgate, float* __restrict__ dup, const float* __restrict__ dout,
                                     const float* __restrict__ gate, const float* __restrict__ up, u32 act, u64 n) {
    for (u64 i = global_thread(); i < n; i += grid_stride()) {
        const float g = gate[i], u = up[i], d = dout[i];
        float a, da;
        if (act == 0) {
            const float s = sigmoid_f(g);
            a = g * s;
            da = s * (1.0f + g * (1.0f - s));
        } else {
            const float r = fmaxf(g, 0.0f);
            a = r * r;
            da = 2.0f * r;
        }
        dgate[i] = d * u * da;
        dup[i] = d * a;
    }
}
