// Rotary position embedding, in place: one thread per (row, head, pair). `table` is [seq_len, head_dim/2, (cos,
// sin)]; the position of row r is r % seq_len; `inverse` rotates back (the backward).

extern "C" __global__ void rope_f32(float* __restrict__ x, const float* __restrict__ table, u32 rows, u32 seq_len,
                                    u32 n_heads, u32 head_dim, u32 half_style, u32 inverse) {
    const u32 half = head_dim / 2;
    const u64 total = (u64)rows * n_heads * half;
    for (u64 t = global_thread(); t < total; t += grid_stride()) {
        const u32 i = (u32)(t % half);
        const u64 rh = t / half;
        const u32 head = (u32)(rh % n_heads);
        const u64 row = rh / n_heads;
        const u32 pos = (u32)(row % seq_len);
        const float c = table[(u64)pos * head_dim + 2 * i];
        float s = table[(u64)pos * head_dim + 2 * i + 1];
        if (inverse) s = -s;
        float* h = x + (row * n_heads + head) * head_dim;
        const u32 ia = half_style ? i : 2 * i;
        const u32 ib = half_style ? i + half : 2 * i + 1;
        const float a = h[ia], b = h[ib];
        h[ia] = a * c - b * s;
        h[ib] = a * s + b * c;
    }
}
