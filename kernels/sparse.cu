// Sparse-coding kernels: soft-thresholding (the proximal operator of
// lam |c|), the batched FISTA step, and the KL sparsity penalty's column
// statistics. The L1 and L2 penalties are pointwise losses (pointwise.cu).
#include "common.cuh"

namespace fastae {

template <typename A>
__device__ __forceinline__ A soft(A x, A lam, A& mask) {
    bool small = abs_(x) <= lam;  // false for nan: nan stays nan, its mask is 1 (as torch's softshrink)
    mask = small ? A(0) : A(1);
    return small ? A(0) : (x > A(0) ? x - lam : x + lam);
}

// out = soft(c, lam), mask = its derivative (null: not written). lam: null
// for the scalar lam_scalar, else an array whose flat values repeat with
// `period` along c's (period == n: one per element). `out` may be `c`.
// `vectorized`: scalar lam and every pointer 16-byte aligned.
template <typename T>
__global__ void __launch_bounds__(256) soft_threshold(
        const T* c, const T* lam, double lam_scalar, index_t period, T* out, T* mask, index_t n, int vectorized) {
    typedef typename Acc<T>::type A;
    const index_t stride = (index_t)gridDim.x * blockDim.x;
    index_t first = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
    const A l = A(lam_scalar);
    A m;
    if (vectorized) {
        const int V = Width<T>::value;
        const index_t packs = n / V;
        for (index_t i = first; i < packs; i += stride) {
            Pack<T, V> cp = load_pack<T, V>(c, i), op, mp;
#pragma unroll
            for (int k = 0; k < V; ++k) {
                op.v[k] = store<T>(soft<A>(to_acc(cp.v[k]), l, m));
                mp.v[k] = store<T>(m);
            }
            store_pack<T, V>(out, i, op);
            if (mask) store_pack<T, V>(mask, i, mp);
        }
        first += packs * V;
    }
    for (index_t i = first; i < n; i += stride) {
        A li = lam ? to_acc(lam[period == n ? i : i % period]) : l;
        out[i] = store<T>(soft<A>(to_acc(c[i]), li, m));
        if (mask) mask[i] = store<T>(m);
    }
}

// One FISTA step with adaptive restart on every row of the codes (n, k), one
// thread per row: z' = soft(y - 2 step (gy - b), thr) with gy = y G, then the
// momentum restarts when (y - z') . (z' - z) > 0, y <- z' + (t - 1) / t' (z' - z),
// z <- z'. change[r] = ||z' - z||^2 / ||z'||^2 (0 when nothing moved).
template <typename T>
__global__ void __launch_bounds__(256) fista_step(
        T* y, const T* gy, const T* b, T* z, T* z_new, index_t n, int k, double step, double thr,
        double* t, int accelerated, double* change) {
    typedef typename Acc<T>::type A;
    const index_t r = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    const index_t row = r * k;
    const A two_step = A(2) * A(step), a_thr = A(thr);
    A back = 0, m;
    for (int j = 0; j < k; ++j) {
        A yj = to_acc(y[row + j]);
        A zn = soft<A>(yj - two_step * (to_acc(gy[row + j]) - to_acc(b[row + j])), a_thr, m);
        z_new[row + j] = store<T>(zn);
        back += (yj - zn) * (zn - to_acc(z[row + j]));
    }
    double tr = (!accelerated || back > A(0)) ? 1.0 : t[r];  // restart: forget the momentum
    double tn = 0.5 * (1.0 + sqrt(1.0 + 4.0 * tr * tr));
    t[r] = tn;
    const A momentum = accelerated ? A((tr - 1.0) / tn) : A(0);
    A moved = 0, size = 0;
    for (int j = 0; j < k; ++j) {
        A zn = to_acc(z_new[row + j]), d = zn - to_acc(z[row + j]);
        y[row + j] = store<T>(zn + momentum * d);
        z[row + j] = store<T>(zn);
        moved += d * d;
        size += zn * zn;
    }
    change[r] = moved == A(0) ? 0.0 : (size == A(0) ? __longlong_as_double(0x7ff0000000000000LL) : double(moved / size));
}

// KL sparsity, one thread per column j of h (n, k): rho_hat[j] = mean_i h_ij
// (in double), bad[j] = count of values outside (0, 1) (nan counts).
template <typename T>
__global__ void __launch_bounds__(256) column_means(const T* h, index_t n, index_t k, double* rho_hat, double* bad) {
    const index_t j = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= k) return;
    double s = 0.0, outside = 0.0;
    for (index_t i = 0; i < n; ++i) {
        double v = (double)to_acc(h[i * k + j]);
        s += v;
        outside += !(v > 0.0 && v < 1.0);
    }
    rho_hat[j] = s / (double)n;
    bad[j] = outside;
}

// grad_ij = per_column[j] (the KL gradient does not depend on i).
template <typename T>
__global__ void __launch_bounds__(256) spread_columns(const double* per_column, index_t n, index_t k, T* grad) {
    const index_t stride = (index_t)gridDim.x * blockDim.x;
    for (index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x; i < n * k; i += stride)
        grad[i] = store<T>(per_column[i % k]);
}

}  // namespace fastae
