// RMSNorm: y = x·rstd·w, rstd = 1/sqrt(mean(x²) + eps), one block per row. Backward: dx per row (one block per
// row), dw accumulated over rows in two deterministic passes (column partials over fixed chunks of rows, then the
// chunks in order).

extern "C" __global__ void rmsnorm_fwd(float* __restrict__ out, float* __restrict__ rstd, const float* __restrict__ x,
                                       const float* __restrict__ w, u32 cols, float eps) {
    const u64 row = blockIdx.x;
    const float* xr = x + row * cols;
    float* yr = out + row * cols;
    float ss = 0.0f;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) ss += xr[c] * xr[c];
    ss = block_sum_f(ss);
    const float rs = 1.0f / sqrtf(ss * (1.0f / (float)cols) + eps);
    if (threadIdx.x == 0) rstd[row] = rs;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = xr[c] * rs * w[c];
}

// dx_j (+)= r·(w_j·dy_j − x_j·r²/C·Σ_i dy_i·w_i·x_i)
extern "C" __global__ void rmsnorm_bwd_dx(float* __restrict__ dx, const float* __restrict__ dout,
                                          const float* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ rstd, u32 cols, u32 accumulate) {
    const u64 row = blockIdx.x;
    const float* xr = x + row * cols;
    const float* dy = dout + row * cols;
    float* dxr = dx + row * cols;
    const float r = rstd[row];
    float dot = 0.0f;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) dot += dy[c] * w[c] * xr[c];
    dot = block_sum_f(dot);
    const float coef = dot * r * r * (1.0f / (float)cols);
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
        const float g = r * (w[c] * dy[c] - xr[c] * coef);
        dxr[c] = accumulate ? dxr[c] + g : g;
    }
}

// partial[chunk·cols + c] = Σ_{rows of chunk} dy·x·rstd; grid (ceil(cols/blockDim), chunks).
extern "C" __global__ void rmsnorm_bwd_dw_partial(float* __restrict__ partial, const float* __restrict__ dout,
                                                  const float* __restrict__ x, const float* __restrict__ rstd,
                                                  u32 rows, u32 cols, u32 rows_per_chunk) {
    const u32 c = blockIdx.x * blockDim.x + threadIdx.x;
    const u32 chunk = blockIdx.y;
    if (c >= cols) return;
    const u32 r0 = chunk * rows_per_chunk;
    const u32 r1 = min(rows, r0 + rows_per_chunk);
    float acc = 0.0f;
    for (u32 r = r0; r < r1; ++r) {
        const u64 i = (u64)r * cols + c;
        acc += dout[i] * x[i] * rstd[r];
    }
    partial[(u64)chunk * cols + c] = acc;
}

// dw[c] += Σ_chunks partial[chunk·cols + c], chunks in order.
extern "C" __global__ void rmsnorm_bwd_dw_final(float* __restrict__ dw, const float* __restrict__ partial, u32 chunks,
                                                u32 cols) {
    const u32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float acc = 0.0f;
    for (u32 k = 0; k < chunks; ++k) acc += partial[(u64)k * cols + c];
    dw[c] += acc;
}
