// A 1-D window along one axis of an array viewed as (outer, n, inner), and its adjoint: the building
// block of the general structural losses (volumes, reflect padding, per-pixel maps). Output position i
// reads input i + t - pad, t < win; outside [0, n) a zero, or (reflect) the sample mirrored about the
// edge, once. The adjoint gathers, for each input position, every (output, tap) that read it, its
// mirror images included: no atomics, so the result is deterministic. Mirrors fastae/cpu/filters.py.
#include "common.cuh"

namespace fastae {

__device__ __forceinline__ index_t source_of(index_t p, index_t n, int reflect) {
    if (p >= 0 && p < n) return p;
    if (!reflect) return -1;
    p = p < 0 ? -p : 2 * (n - 1) - p;  // one reflection (the public layer keeps pad < n)
    return (p >= 0 && p < n) ? p : -1;
}

// out (outer, m, inner) = the window along the middle axis of a (outer, n, inner), m = n + 2 pad - win + 1.
template <typename T>
__global__ void __launch_bounds__(256) filter_axis(
        const T* a, const double* w, int win, index_t outer, index_t n, index_t inner, index_t m, int pad,
        int reflect, T* out) {
    typedef typename Acc<T>::type A;
    const index_t total = outer * m * inner;
    for (index_t e = (index_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (index_t)gridDim.x * blockDim.x) {
        const index_t k = e % inner, i = (e / inner) % m, o = e / (inner * m);
        A acc = A(0);
        for (int t = 0; t < win; ++t) {
            const index_t s = source_of(i + t - pad, n, reflect);
            if (s >= 0) acc += A(w[t]) * to_acc(a[(o * n + s) * inner + k]);
        }
        out[e] = store<T>(acc);
    }
}

// out (outer, n, inner) = the adjoint of filter_axis applied to g (outer, m, inner).
template <typename T>
__global__ void __launch_bounds__(256) filter_axis_adjoint(
        const T* g, const double* w, int win, index_t outer, index_t n, index_t inner, index_t m, int pad,
        int reflect, T* out) {
    typedef typename Acc<T>::type A;
    const index_t total = outer * n * inner;
    for (index_t e = (index_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (index_t)gridDim.x * blockDim.x) {
        const index_t k = e % inner, j = (e / inner) % n, o = e / (inner * n);
        A acc = A(0);
        const index_t mirrors[3] = {j, -j, 2 * (n - 1) - j};
        for (int q = 0; q < (reflect ? 3 : 1); ++q) {
            const index_t p = mirrors[q];  // a padded position that reads input j
            if (q > 0 && (p == j || (p >= 0 && p < n))) continue;
            const index_t first = p + pad - win + 1 > 0 ? p + pad - win + 1 : 0;
            const index_t stop = p + pad + 1 < m ? p + pad + 1 : m;
            for (index_t i = first; i < stop; ++i) acc += A(w[p + pad - i]) * to_acc(g[(o * m + i) * inner + k]);
        }
        out[e] = store<T>(acc);
    }
}

}  // namespace fastae
