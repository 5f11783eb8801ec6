// Deterministic reductions in f64: Σx², Σa·b. Pass 1 writes one partial per block (grid-stride over the input, a
// fixed grid for a given length), pass 2 sums a tensor's partials in one block into `out[slot]`, and `sum_slots`
// adds slots 0..n in order: the global gradient norm of a whole model costs one device→host copy.

extern "C" __global__ void sum_squares_partial(const float* __restrict__ x, u64 n, double* __restrict__ partial) {
    double acc = 0.0;
    for (u64 i = global_thread(); i < n; i += grid_stride()) {
        const double v = (double)x[i];
        acc += v * v;
    }
    acc = block_sum_d(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

extern "C" __global__ void dot_partial(const float* __restrict__ a, const float* __restrict__ b, u64 n,
                                       double* __restrict__ partial) {
    double acc = 0.0;
    for (u64 i = global_thread(); i < n; i += grid_stride()) acc += (double)a[i] * (double)b[i];
    acc = block_sum_d(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// One block: out[slot] = Σ partial[0..count).
extern "C" __global__ void sum_partials(const double* __restrict__ partial, u32 count, double* __restrict__ out,
                                        u32 slot) {
    double acc = 0.0;
    for (u32 i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
    acc = block_sum_d(acc);
    if (threadIdx.x == 0) out[slot] = acc;
}

// One thread: out[0] = ((slot[0] + slot[1]) + ...) in order, as the CPU sums the tensors' norms.
extern "C" __global__ void sum_slots(const double* __restrict__ slots, u32 count, double* __restrict__ out) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        double acc = 0.0;
        for (u32 i = 0; i < count; ++i) acc += slots[i];
        out[0] = acc;
    }
}
