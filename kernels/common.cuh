// Shared helpers of fastae's CUDA kernels: element types, conversions, math
// overloads and the deterministic block sum. Compiled by NVRTC (through CuPy)
// and by nvcc (CI's compile check).
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace fastae {

typedef long long index_t;  // every index is 64-bit: safe beyond 2^31 elements

// The accumulation type of an element type: float for float, half and
// bfloat16; double for double.
template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> struct Store;
template <> struct Store<float> { static __device__ __forceinline__ float from(double v) { return (float)v; } };
template <> struct Store<double> { static __device__ __forceinline__ double from(double v) { return v; } };
template <> struct Store<__half> { static __device__ __forceinline__ __half from(double v) { return __float2half((float)v); } };
template <> struct Store<__nv_bfloat16> {
    static __device__ __forceinline__ __nv_bfloat16 from(double v) { return __float2bfloat16((float)v); }
};
template <typename T> __device__ __forceinline__ T store(double v) { return Store<T>::from(v); }
template <typename T> __device__ __forceinline__ T store(float v) { return Store<T>::from((double)v); }

// Math overloads in the accumulation type.
__device__ __forceinline__ float exp_(float v) { return expf(v); }
__device__ __forceinline__ double exp_(double v) { return exp(v); }
__device__ __forceinline__ float log_(float v) { return logf(v); }
__device__ __forceinline__ double log_(double v) { return log(v); }
__device__ __forceinline__ float log1p_(float v) { return log1pf(v); }
__device__ __forceinline__ double log1p_(double v) { return log1p(v); }
__device__ __forceinline__ float tanh_(float v) { return tanhf(v); }
__device__ __forceinline__ double tanh_(double v) { return tanh(v); }
__device__ __forceinline__ float abs_(float v) { return fabsf(v); }
__device__ __forceinline__ double abs_(double v) { return fabs(v); }
__device__ __forceinline__ float sqrt_(float v) { return sqrtf(v); }
__device__ __forceinline__ double sqrt_(double v) { return sqrt(v); }

// V elements loaded or stored as one 16-byte transaction.
template <typename T, int V> struct alignas(16) Pack { T v[V]; };
template <typename T> struct Width { enum { value = 16 / sizeof(T) }; };

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p, index_t i) {
    return reinterpret_cast<const Pack<T, V>*>(p)[i];
}
template <typename T, int V>
__device__ __forceinline__ void store_pack(T* p, index_t i, const Pack<T, V>& v) {
    reinterpret_cast<Pack<T, V>*>(p)[i] = v;
}

// Sum of one value per thread over the block, in a fixed tree order: the
// same inputs give the same bits, run after run. `scratch` holds blockDim.x
// doubles (a power of two); the result is valid in every thread.
__device__ __forceinline__ double block_sum(double v, double* scratch) {
    const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned n = blockDim.x * blockDim.y * blockDim.z;
    scratch[tid] = v;
    __syncthreads();
    for (unsigned s = n / 2; s > 0; s >>= 1) {
        if (tid < s) scratch[tid] += scratch[tid + s];
        __syncthreads();
    }
    double total = scratch[0];
    __syncthreads();
    return total;
}

// Sums of `count` consecutive partials per row, one block per row (blockDim
// a power of two): the second pass of every deterministic reduction.
__device__ __forceinline__ void row_sums(const double* partials, index_t count, double* sums, double* scratch) {
    const double* row = partials + blockIdx.x * count;
    double v = 0.0;
    for (index_t i = threadIdx.x; i < count; i += blockDim.x) v += row[i];
    double total = block_sum(v, scratch);
    if (threadIdx.x == 0) sums[blockIdx.x] = total;
}

}  // namespace fastae
