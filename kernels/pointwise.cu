// Fused pointwise losses: value, gradient (and, when asked, the target's) and a
// deterministic reduction in one pass over memory. Each loss of the table
// (fastae/_table.py) is one small struct with a device function
// (y, t) -> (loss, dloss/dy, outside, dloss/dt), its fields
// arriving as p0, p1 in the table's order; each output activation one struct
// with z -> (y, dy/dz); Compose chains them (BCE after a sigmoid gets its
// own stable form), and the one loop in pointwise_partials weighs, writes the
// gradient and sums. Template instances are named by the launcher
// (fastae/cuda/pointwise.py), e.g. fastae::pointwise_partials<float, fastae::MSE, fastae::Sigmoid>.
#include "common.cuh"

namespace fastae {

// A loss at one element: its value, d/dy, 1 outside the loss's domain (else 0), and d/dt from the
// loss's own intermediates (minus d/dy for a loss of y - t), so that asking for it changes no other
// output's rounding.
template <typename A> struct Point { A value, slope, outside, target; };

// ---------------------------------------------------------------- losses
// p0, p1: the loss's parameters (see the launcher), in the accumulation type.
struct MSE {
    template <typename A> static __device__ __forceinline__ Point<A> at(A y, A t, A, A) {
        A d = y - t, slope = d + d;
        return {d * d, slope, A(0), -slope};
    }
};

struct L1 {
    template <typename A> static __device__ __forceinline__ Point<A> at(A y, A t, A, A) {
        A d = y - t;
        A sign = A(d > A(0)) - A(d < A(0));
        sign = d != d ? d : sign;  // sign(0) = 0, sign(nan) = nan
        return {abs_(d), sign, A(0), -sign};
    }
};

struct Huber {  // p0 = delta
    template <typename A> static __device__ __forceinline__ Point<A> at(A y, A t, A delta, A) {
        A d = y - t;
        A a = abs_(d);
        A value = a < delta ? A(0.5) * d * d : delta * (a - A(0.5) * delta);
        A slope = d < -delta ? -delta : (d > delta ? delta : d);  // clamp, nan stays nan
        return {value, slope, A(0), -slope};
    }
};

struct BCE {  // on probabilities, as torch: logs clamped at -100, gradient denominator at 1e-12
    template <typename A> static __device__ __forceinline__ Point<A> at(A y, A t, A, A) {
        A log_y = log_(y), log_1my = log1p_(-y);
        log_y = log_y < A(-100) ? A(-100) : log_y;
        log_1my = log_1my < A(-100) ? A(-100) : log_1my;
        A den = (A(1) - y) * y;
        const A eps = A(1e-12f);  // torch's constant is a float32, in double too
        den = den < eps ? eps : den;
        return {-(t * log_y + (A(1) - t) * log_1my), (y - t) / den, A((y < A(0)) | (y > A(1))), log_1my - log_y};
    }
};

struct GaussianNLL {  // p0 = 1 / sigma^2, p1 = log sigma + log(2 pi) / 2
    template <typename A> static __device__ __forceinline__ Point<A> at(A y, A t, A inv_var, A c) {
        A d = y - t, slope = d * inv_var;
        return {A(0.5) * d * d * inv_var + c, slope, A(0), -slope};
    }
};

struct LaplaceNLL {  // p0 = 1 / scale, p1 = log(2 scale)
    template <typename A> static __device__ __forceinline__ Point<A> at(A y, A t, A inv_scale, A c) {
        Point<A> p = L1::at(y, t, A(0), A(0));
        A slope = p.slope * inv_scale;
        return {p.value * inv_scale + c, slope, A(0), -slope};
    }
};

struct Charbonnier {  // p0 = eps
    template <typename A> static __device__ __forceinline__ Point<A> at(A y, A t, A eps, A) {
        A d = y - t, r = sqrt_(d * d + eps * eps), slope = d / r;
        return {abs_(d) < eps ? d * d / (r + eps) : r - eps, slope, A(0), -slope};  // r - eps cancels where |d| << eps
    }
};

// ---------------------------------------------------------------- activations
template <typename A> struct Act { A y, dy; };

struct Identity {
    template <typename A> static __device__ __forceinline__ Act<A> at(A z, A) { return {z, A(1)}; }
};

struct Sigmoid {
    template <typename A> static __device__ __forceinline__ Act<A> at(A z, A) {
        A e = exp_(-abs_(z));  // in (0, 1]: no overflow for any z
        A r = A(1) / (A(1) + e);
        A y = z >= A(0) ? r : e * r;
        return {y, y * (A(1) - y)};
    }
};

struct Tanh {  // 1 - tanh(z)^2 = 4e / (1 + e)^2 with e = exp(-2|z|): no cancellation near saturation
    template <typename A> static __device__ __forceinline__ Act<A> at(A z, A) {
        A e = exp_(A(-2) * abs_(z)), r = A(1) / (A(1) + e);
        return {tanh_(z), A(4) * e * r * r};
    }
};

struct ReLU {
    template <typename A> static __device__ __forceinline__ Act<A> at(A z, A) {
        return {z <= A(0) ? A(0) : z, z <= A(0) ? A(0) : A(1)};  // nan stays nan
    }
};

struct LeakyReLU {
    template <typename A> static __device__ __forceinline__ Act<A> at(A z, A slope) {
        return {z <= A(0) ? z * slope : z, z <= A(0) ? slope : A(1)};
    }
};

struct Softplus {  // log(1 + exp(z)) = max(z, 0) + log1p(exp(-|z|)): no overflow for any z
    template <typename A> static __device__ __forceinline__ Act<A> at(A z, A) {
        A e = exp_(-abs_(z)), r = A(1) / (A(1) + e);
        return {(z > A(0) ? z : A(0)) + log1p_(e), z >= A(0) ? r : e * r};
    }
};

// loss(act(z), t) and its derivative w.r.t. z.
template <class Loss, class Activation> struct Compose {
    template <typename A> static __device__ __forceinline__ Point<A> at(A z, A t, A p0, A p1, A slope) {
        Act<A> a = Activation::template at<A>(z, slope);
        Point<A> p = Loss::template at<A>(a.y, t, p0, p1);
        p.slope *= a.dy;
        return p;
    }
};

// BCE fused with the sigmoid (binary_cross_entropy_with_logits), stable for any finite logit.
template <> struct Compose<BCE, Sigmoid> {
    template <typename A> static __device__ __forceinline__ Point<A> at(A z, A t, A, A, A) {
        A e = exp_(-abs_(z));
        A r = A(1) / (A(1) + e);
        A y = z >= A(0) ? r : e * r;
        return {(z > A(0) ? z : A(0)) - z * t + log1p_(e), y - t, A(0), -z};
    }
};

// ---------------------------------------------------------------- the loop
// One element: its weighted loss into `total`, out-of-domain flag into `bad`;
// returns the scaled, weighted gradient; `value` receives the weighted loss
// (NaN where the value lies outside the loss's domain), `target` the scaled,
// weighted gradient in t.
template <class F, typename A>
__device__ __forceinline__ A element(A z, A t, A w, A scale, A p0, A p1, A slope, A& total, A& bad, A& value,
                                     A& target) {
    Point<A> p = F::template at<A>(z, t, p0, p1, slope);
    target = p.target * w * scale;
    value = p.value * w;
    total += value;
    bad += p.outside;
    if (p.outside > A(0)) value = A(__longlong_as_double(0x7ff8000000000000LL));
    return p.slope * w * scale;
}

// Partial sums of w * loss(act(z), t) per block (256 threads, a grid-stride
// loop); the gradient scale * w * dloss/dz into `grad` (added to it with
// `accumulate`), the per-element loss into `values`, scale * w * dloss/dt into
// `tgrad`. Null `t` is a zero target (penalties), null `w` the scalar weight
// `w_scalar`, null `grad`, `values` or `tgrad` nothing written. `vectorized`:
// every pointer is 16-byte aligned.
template <typename T, class Loss, class Activation>
__global__ void __launch_bounds__(256) pointwise_partials(
        const T* z, const T* t, const T* w, double w_scalar, T* grad, int accumulate, T* values, T* tgrad,
        double scale, double p0, double p1, double slope, index_t n, int vectorized,
        double* block_sums, double* block_bad) {
    typedef typename Acc<T>::type A;
    typedef Compose<Loss, Activation> F;
    __shared__ double scratch[256];
    const A a_scale = A(scale), a_p0 = A(p0), a_p1 = A(p1), a_slope = A(slope), a_w = A(w_scalar);
    const index_t stride = (index_t)gridDim.x * blockDim.x;
    index_t first = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
    A total = A(0), bad = A(0), value, target;
    if (vectorized) {
        const int V = Width<T>::value;
        const index_t packs = n / V;
        for (index_t i = first; i < packs; i += stride) {
            Pack<T, V> zp = load_pack<T, V>(z, i), tp, wp, gp, vp, sp;
            if (t) tp = load_pack<T, V>(t, i);
            if (w) wp = load_pack<T, V>(w, i);
            if (grad && accumulate) gp = load_pack<T, V>(grad, i);
#pragma unroll
            for (int k = 0; k < V; ++k) {
                A g = element<F, A>(to_acc(zp.v[k]), t ? to_acc(tp.v[k]) : A(0), w ? to_acc(wp.v[k]) : a_w,
                                    a_scale, a_p0, a_p1, a_slope, total, bad, value, target);
                gp.v[k] = store<T>(grad && accumulate ? to_acc(gp.v[k]) + g : g);
                vp.v[k] = store<T>(value);
                sp.v[k] = store<T>(target);
            }
            if (grad) store_pack<T, V>(grad, i, gp);
            if (values) store_pack<T, V>(values, i, vp);
            if (tgrad) store_pack<T, V>(tgrad, i, sp);
        }
        first += packs * V;  // the tail, element by element
    }
    for (index_t i = first; i < n; i += stride) {
        A g = element<F, A>(to_acc(z[i]), t ? to_acc(t[i]) : A(0), w ? to_acc(w[i]) : a_w,
                            a_scale, a_p0, a_p1, a_slope, total, bad, value, target);
        if (grad) grad[i] = store<T>(accumulate ? to_acc(grad[i]) + g : g);
        if (values) values[i] = store<T>(value);
        if (tgrad) tgrad[i] = store<T>(target);
    }
    double block_total = block_sum((double)total, scratch);
    double block_bad_count = block_sum((double)bad, scratch);
    if (threadIdx.x == 0) {
        block_sums[blockIdx.x] = block_total;
        block_bad[blockIdx.x] = block_bad_count;
    }
}

// Second pass, one block of 1024 threads: `total` receives the sum of the
// partials, `outside` the count of elements outside the loss's domain, `value`
// the reduced loss (sum * scale, NaN when that count is not 0) in the data's type.
template <typename T>
__global__ void __launch_bounds__(1024) pointwise_finish(
        const double* block_sums, const double* block_bad, index_t count, double scale, T* value, double* total,
        double* outside) {
    __shared__ double scratch[1024];
    double s = 0.0, b = 0.0;
    for (index_t i = threadIdx.x; i < count; i += blockDim.x) {
        s += block_sums[i];
        b += block_bad[i];
    }
    s = block_sum(s, scratch);
    b = block_sum(b, scratch);
    if (threadIdx.x == 0) {
        total[0] = s;
        outside[0] = b;
        value[0] = store<T>(b > 0.0 ? __longlong_as_double(0x7ff8000000000000LL) : s * scale);
    }
}

// y = act(z) and, unless dy is null, its derivative, element by element (a grid-stride loop).
template <typename T, class Activation>
__global__ void __launch_bounds__(256) activate(const T* z, T* y, T* dy, double slope, index_t n) {
    typedef typename Acc<T>::type A;
    const index_t stride = (index_t)gridDim.x * blockDim.x;
    for (index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        Act<A> a = Activation::template at<A>(to_acc(z[i]), A(slope));
        y[i] = store<T>(a.y);
        if (dy) dy[i] = store<T>(a.dy);
    }
}

}  // namespace fastae
