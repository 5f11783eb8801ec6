// Helpers shared by every kernel of the CUDA backend (compiled at run time with NVRTC; see compile.rs).
//
// Conventions: f32 data, row-major; lengths and offsets in `unsigned long long` where a product of sizes can pass
// 2^32; every reduction has a fixed shape (block size, grid size, order), so results are deterministic for a given
// problem size. Block reductions must be reached by every thread of the block (no early return before them).

typedef unsigned int u32;
typedef unsigned long long u64;

#define FULL_MASK 0xffffffffu
// Threads per block of the row kernels and reductions (a multiple of 32, at most 1024).
#define BLOCK 256

__device__ __forceinline__ float warp_sum_f(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max_f(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

__device__ __forceinline__ double warp_max_d(double v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

#define NEG_INF_F __int_as_float(0xff800000)
#define NEG_INF_D __longlong_as_double(0xfff0000000000000ULL)
#define NAN_F __int_as_float(0x7fc00000)

// Block-wide reductions (blockDim.x a multiple of 32): every thread gets the result. The order of the additions
// is fixed by the block size alone.
#define BLOCK_REDUCE(NAME, T, WARP, IDENTITY)                                   \
    __device__ __forceinline__ T NAME(T v) {                                    \
        __shared__ T partial[32];                                               \
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;             \
        const int warps = (blockDim.x + 31) >> 5;                               \
        v = WARP(v);                                                            \
        __syncthreads(); /* an earlier call's readers are done with partial */  \
        if (lane == 0) partial[warp] = v;                                       \
        __syncthreads();                                                        \
        v = (lane < warps) ? partial[lane] : (IDENTITY);                        \
        return WARP(v);                                                         \
    }

BLOCK_REDUCE(block_sum_f, float, warp_sum_f, 0.0f)
BLOCK_REDUCE(block_sum_d, double, warp_sum_d, 0.0)
BLOCK_REDUCE(block_max_f, float, warp_max_f, NEG_INF_F)

// NaN-propagating clamp (torch.clamp), as the CPU's `quant::hard::clamp`.
__device__ __forceinline__ float clamp_nan(float x, float lo, float hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

// Round half to even, as the CPU's `Float::round_even` (and torch.round).
__device__ __forceinline__ float round_even(float x) { return rintf(x); }

__device__ __forceinline__ u64 global_thread() { return (u64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ u64 grid_stride() { return (u64)gridDim.x * blockDim.x; }
