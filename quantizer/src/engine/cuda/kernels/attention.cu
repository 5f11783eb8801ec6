// Causal grouped-query attention, flash style: the forward saves only the log-sum-exp of each score row
// (`lse`, [batch, heads, seq]) instead of the probability matrix, and the backward recomputes the probabilities
// tile by tile. Compiled once per head dimension (HEAD_DIM, defined by the host), which sizes the register arrays.
//
// A row (one query or key of one head) is handled by LANES consecutive threads; thread `lane` holds the elements
// d = c·LANES + lane, c < CP, so a warp reading one row of a shared tile touches consecutive words (no bank
// conflicts) and threads of different rows read the same words (broadcast). Dot products are reduced over the
// LANES threads with shuffles; every loop that contains one has bounds that are uniform across the block.
//
// Forward  (grid: query tiles × heads × batch): online softmax over key tiles in shared memory,
//          out_i = Σ_j softmax_j(s_ij)·v_j, lse_i = log Σ_j exp(s_ij), s_ij = scale·q_i·k_j for j ≤ i.
// Backward: delta_i = Σ_d dO_id·O_id; p_ij = exp(s_ij − lse_i); dp_ij = dO_i·v_j; ds_ij = p_ij·(dp_ij − delta_i);
//          dQ_i = scale·Σ_j ds_ij·k_j (grid over query tiles), dK_j = scale·Σ_{h in group, i ≥ j} ds_ij·q_i and
//          dV_j = Σ p_ij·dO_i (grid over key tiles, summing the group's query heads in order: no atomics).

#define D HEAD_DIM
#if D <= 32
#define LANES 1
#elif D <= 64
#define LANES 2
#elif D <= 128
#define LANES 4
#else
#define LANES 8
#endif
#define CP ((D + LANES - 1) / LANES)
#define TILE (D <= 64 ? 64 : (D <= 128 ? 32 : 16))
#define THREADS (TILE * LANES)
#define CHUNK 16

__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int o = LANES / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Loads rows [row0, row0 + TILE) of one head (columns col0..col0+D of rows of `stride` floats, `rows_total`
// rows from `base`) into a [TILE][D] shared tile, scaled by `mul`; rows past the end are zero.
__device__ __forceinline__ void load_tile(float* __restrict__ tile, const float* __restrict__ base, u32 row0,
                                          u32 rows_total, u32 stride, u32 col0, float mul) {
    for (u32 e = threadIdx.x; e < TILE * D; e += THREADS) {
        const u32 r = e / D, d = e % D;
        const u32 row = row0 + r;
        tile[e] = row < rows_total ? base[(u64)row * stride + col0 + d] * mul : 0.0f;
    }
}

extern "C" __global__ void __launch_bounds__(THREADS)
attn_fwd(float* __restrict__ out, float* __restrict__ lse, const float* __restrict__ q, const float* __restrict__ k,
         const float* __restrict__ v, u32 T, u32 H, u32 HKV, float scale) {
    __shared__ float ks[TILE * D];
    __shared__ float vs[TILE * D];
    const u32 tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const u32 g = h / (H / HKV);
    const u32 lane = threadIdx.x % LANES, r = threadIdx.x / LANES;
    const u32 i = tile * TILE + r;
    const bool valid = i < T;
    const u32 ie = valid ? i : T - 1;
    const u32 qd = H * D, kvd = HKV * D;
    const float* qrow = q + ((u64)b * T + ie) * qd + h * D;
    const float* kb = k + (u64)b * T * kvd;
    const float* vb = v + (u64)b * T * kvd;
    float qr[CP], acc[CP];
#pragma unroll
    for (int c = 0; c < CP; ++c) {
        const u32 d = c * LANES + lane;
        qr[c] = d < D ? qrow[d] * scale : 0.0f;
        acc[c] = 0.0f;
    }
    float m = NEG_INF_F, l = 0.0f;
    const u32 keys = min(T, (tile + 1) * TILE);  // keys 0..keys−1 are seen by some row of this tile
    for (u32 j0 = 0; j0 < keys; j0 += TILE) {
        __syncthreads();
        load_tile(ks, kb, j0, T, kvd, g * D, 1.0f);
        load_tile(vs, vb, j0, T, kvd, g * D, 1.0f);
        __syncthreads();
        const u32 jn = min((u32)TILE, keys - j0);
        for (u32 jj0 = 0; jj0 < jn; jj0 += CHUNK) {
            float s[CHUNK];
            float cm = NEG_INF_F;
#pragma unroll
            for (int x = 0; x < CHUNK; ++x) {
                const u32 jj = jj0 + x;
                float dot = 0.0f;
#pragma unroll
                for (int c = 0; c < CP; ++c) {
                    const u32 d = c * LANES + lane;
                    if (d < D) dot += qr[c] * ks[jj * D + d];
                }
                dot = group_sum(dot);
                s[x] = (jj < jn && j0 + jj <= ie) ? dot : NEG_INF_F;
                cm = fmaxf(cm, s[x]);
            }
            const float m_new = fmaxf(m, cm);
            const float corr = expf(m - m_new);
            l *= corr;
#pragma unroll
            for (int c = 0; c < CP; ++c) acc[c] *= corr;
#pragma unroll
            for (int x = 0; x < CHUNK; ++x) {
                const float p = expf(s[x] - m_new);
                l += p;
                const u32 jj = jj0 + x;
#pragma unroll
                for (int c = 0; c < CP; ++c) {
                    const u32 d = c * LANES + lane;
                    if (d < D) acc[c] += p * vs[jj * D + d];
                }
            }
            m = m_new;
        }
    }
    if (valid) {
        const float inv = 1.0f / l;
        float* orow = out + ((u64)b * T + i) * qd + h * D;
#pragma unroll
        for (int c = 0; c < CP; ++c) {
            const u32 d = c * LANES + lane;
            if (d < D) orow[d] = acc[c] * inv;
        }
        if (lane == 0) lse[((u64)b * H + h) * T + i] = m + logf(l);
    }
}

// delta[(b·H + h)·T + i] = Σ_d dO·O: one warp per (row, head).
extern "C" __global__ void attn_bwd_delta(float* __restrict__ delta, const float* __restrict__ out,
                                          const float* __restrict__ dout, u32 B, u32 T, u32 H) {
    const u64 warps = (u64)B * T * H;
    const u64 warp = global_thread() / 32;
    const u32 lane = threadIdx.x & 31;
    if (warp >= warps) return;  // whole warps leave together: the grid is sized in whole warps
    const u32 h = (u32)(warp % H);
    const u64 row = warp / H;  // b·T + i
    const float* o = out + row * H * D + h * D;
    const float* d_o = dout + row * H * D + h * D;
    float acc = 0.0f;
    for (u32 d = lane; d < D; d += 32) acc += o[d] * d_o[d];
    acc = warp_sum_f(acc);
    const u32 b = (u32)(row / T), i = (u32)(row % T);
    if (lane == 0) delta[((u64)b * H + h) * T + i] = acc;
}

// dQ (overwritten), grid: query tiles × heads × batch.
extern "C" __global__ void __launch_bounds__(THREADS)
attn_bwd_dq(float* __restrict__ dq, const float* __restrict__ dout, const float* __restrict__ q,
            const float* __restrict__ k, const float* __restrict__ v, const float* __restrict__ lse,
            const float* __restrict__ delta, u32 T, u32 H, u32 HKV, float scale) {
    __shared__ float ks[TILE * D];
    __shared__ float vs[TILE * D];
    const u32 tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const u32 g = h / (H / HKV);
    const u32 lane = threadIdx.x % LANES, r = threadIdx.x / LANES;
    const u32 i = tile * TILE + r;
    const bool valid = i < T;
    const u32 ie = valid ? i : T - 1;
    const u32 qd = H * D, kvd = HKV * D;
    const u64 qoff = ((u64)b * T + ie) * qd + h * D;
    const float* kb = k + (u64)b * T * kvd;
    const float* vb = v + (u64)b * T * kvd;
    float qr[CP], dor[CP], acc[CP];
#pragma unroll
    for (int c = 0; c < CP; ++c) {
        const u32 d = c * LANES + lane;
        qr[c] = d < D ? q[qoff + d] * scale : 0.0f;
        dor[c] = d < D ? dout[qoff + d] : 0.0f;
        acc[c] = 0.0f;
    }
    const u64 stat = ((u64)b * H + h) * T + ie;
    const float lse_i = lse[stat], delta_i = delta[stat];
    const u32 keys = min(T, (tile + 1) * TILE);
    for (u32 j0 = 0; j0 < keys; j0 += TILE) {
        __syncthreads();
        load_tile(ks, kb, j0, T, kvd, g * D, 1.0f);
        load_tile(vs, vb, j0, T, kvd, g * D, 1.0f);
        __syncthreads();
        const u32 jn = min((u32)TILE, keys - j0);
        for (u32 jj = 0; jj < jn; ++jj) {
            float s = 0.0f, dp = 0.0f;
#pragma unroll
            for (int c = 0; c < CP; ++c) {
                const u32 d = c * LANES + lane;
                if (d < D) {
                    s += qr[c] * ks[jj * D + d];
                    dp += dor[c] * vs[jj * D + d];
                }
            }
            s = group_sum(s);
            dp = group_sum(dp);
            const float p = (j0 + jj <= ie) ? expf(s - lse_i) : 0.0f;
            const float ds = p * (dp - delta_i);
#pragma unroll
            for (int c = 0; c < CP; ++c) {
                const u32 d = c * LANES + lane;
                if (d < D) acc[c] += ds * ks[jj * D + d];
            }
        }
    }
    if (valid) {
#pragma unroll
        for (int c = 0; c < CP; ++c) {
            const u32 d = c * LANES + lane;
            if (d < D) dq[qoff + d] = acc[c] * scale;
        }
    }
}

// dK, dV (overwritten), grid: key tiles × KV heads × batch; the group's query heads are summed in order.
extern "C" __global__ void __launch_bounds__(THREADS)
attn_bwd_dkdv(float* __restrict__ dk, float* __restrict__ dv, const float* __restrict__ dout,
              const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
              const float* __restrict__ lse, const float* __restrict__ delta, u32 T, u32 H, u32 HKV, float scale) {
    __shared__ float qs[TILE * D];
    __shared__ float dos[TILE * D];
    __shared__ float lse_s[TILE];
    __shared__ float delta_s[TILE];
    const u32 tile = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const u32 group = H / HKV;
    const u32 lane = threadIdx.x % LANES, r = threadIdx.x / LANES;
    const u32 j = tile * TILE + r;
    const bool valid = j < T;
    const u32 je = valid ? j : T - 1;
    const u32 qd = H * D, kvd = HKV * D;
    const u64 kvoff = ((u64)b * T + je) * kvd + g * D;
    float kr[CP], vr[CP], dka[CP], dva[CP];
#pragma unroll
    for (int c = 0; c < CP; ++c) {
        const u32 d = c * LANES + lane;
        kr[c] = d < D ? k[kvoff + d] : 0.0f;
        vr[c] = d < D ? v[kvoff + d] : 0.0f;
        dka[c] = 0.0f;
        dva[c] = 0.0f;
    }
    const float* qb = q + (u64)b * T * qd;
    const float* dob = dout + (u64)b * T * qd;
    for (u32 hi = 0; hi < group; ++hi) {
        const u32 h = g * group + hi;
        const u64 stat0 = ((u64)b * H + h) * T;
        for (u32 i0 = tile * TILE; i0 < T; i0 += TILE) {
            __syncthreads();
            load_tile(qs, qb, i0, T, qd, h * D, scale);
            load_tile(dos, dob, i0, T, qd, h * D, 1.0f);
            for (u32 e = threadIdx.x; e < TILE; e += THREADS) {
                const u32 i = i0 + e;
                lse_s[e] = i < T ? lse[stat0 + i] : 0.0f;
                delta_s[e] = i < T ? delta[stat0 + i] : 0.0f;
            }
            __syncthreads();
            const u32 in = min((u32)TILE, T - i0);
            for (u32 ii = 0; ii < in; ++ii) {
                float s = 0.0f, dp = 0.0f;
#pragma unroll
                for (int c = 0; c < CP; ++c) {
                    const u32 d = c * LANES + lane;
                    if (d < D) {
                        s += qs[ii * D + d] * kr[c];
                        dp += dos[ii * D + d] * vr[c];
                    }
                }
                s = group_sum(s);
                dp = group_sum(dp);
                const float p = (i0 + ii >= je) ? expf(s - lse_s[ii]) : 0.0f;
                const float ds = p * (dp - delta_s[ii]);
#pragma unroll
                for (int c = 0; c < CP; ++c) {
                    const u32 d = c * LANES + lane;
                    if (d < D) {
                        dva[c] += p * dos[ii * D + d];
                        dka[c] += ds * qs[ii * D + d];
                    }
                }
            }
        }
    }
    if (valid) {
#pragma unroll
        for (int c = 0; c < CP; ++c) {
            const u32 d = c * LANES + lane;
            if (d < D) {
                dk[kvoff + d] = dka[c];
                dv[kvoff + d] = dva[c];
            }
        }
    }
}
