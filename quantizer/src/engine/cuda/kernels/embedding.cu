// Token embedding. Forward: out[r, :] = table[ids[r], :] (NaN for an id outside the table, which the host has
// rejected already). Backward: dtable[id, :] += Σ_{rows with that id} dout[row, :], one block column-band per
// distinct id; `order` lists the rows grouped by id (stable), `seg_start` where each id's rows begin, so every
// element adds its rows in token order — deterministic, race-free, and the CPU's order of additions.

extern "C" __global__ void embedding_fwd(float* __restrict__ out, const float* __restrict__ table,
                                         const u32* __restrict__ ids, u32 rows, u32 dim, u32 vocab) {
    const u64 total = (u64)rows * dim;
    for (u64 i = global_thread(); i < total; i += grid_stride()) {
        const u64 r = i / dim;
        const u32 c = (u32)(i % dim);
        const u32 id = ids[r];
        out[i] = id < vocab ? table[(u64)id * dim + c] : NAN_F;
    }
}

// grid (segments, ceil(dim/blockDim)): segments on x, which allows 2^31 of them
extern "C" __global__ void embedding_bwd(float* __restrict__ dtable, const float* __restrict__ dout,
                                         const u32* __restrict__ order, const u32* __restrict__ seg_start,
                                         const u32* __restrict__ seg_id, u32 dim, u32 vocab) {
    const u32 s = blockIdx.x;
    const u32 c = blockIdx.y * blockDim.x + threadIdx.x;
    const u32 id = seg_id[s];
    if (c >= dim || id >= vocab) return;
    float* dst = dtable + (u64)id * dim + c;
    float acc = *dst;
    for (u32 k = seg_start[s]; k < seg_start[s + 1]; ++k) acc += dout[(u64)order[k] * dim + c];
    *dst = acc;
}
