// Elementwise kernels: fill, axpy, the AdamW update. Grid-stride loops over `n` elements.

extern "C" __global__ void fill_f32(float* __restrict__ x, float value, u64 n) {
    for (u64 i = global_thread(); i < n; i += grid_stride()) x[i] = value;
}

// y += alpha·x
extern "C" __global__ void axpy_f32(float* __restrict__ y, const float* __restrict__ x, float alpha, u64 n) {
    for (u64 i = global_thread(); i < n; i += grid_stride()) y[i] += alpha * x[i];
}

// AdamW (PyTorch semantics, decoupled decay), in the CPU backend's order of operations:
// g = grad·g_scale; m = b1·m + (1−b1)·g; v = b2·v + (1−b2)·g²; p = p·decay − lr·(m·inv_bc1)/(sqrt(v·inv_bc2) + eps).
extern "C" __global__ void adamw_f32(float* __restrict__ p, const float* __restrict__ grad, float* __restrict__ m,
                                     float* __restrict__ v, float lr, float b1, float b2, float eps, float decay,
                                     float inv_bc1, float inv_bc2, float g_scale, u64 n) {
    for (u64 i = global_thread(); i < n; i += grid_stride()) {
        const float g = grad[i] * g_scale;
        const float mi = b1 * m[i] + (1.0f - b1) * g;
        const float vi = b2 * v[i] + (1.0f - b2) * g * g;
        m[i] = mi;
        v[i] = vi;
        const float m_hat = mi * inv_bc1;
        const float v_hat = vi * inv_bc2;
        p[i] = p[i] * decay - lr * m_hat / (sqrtf(v_hat) + eps);
    }
}
