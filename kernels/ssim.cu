// SSIM on the GPU: a tiled forward that computes the four moment maps and the
// SSIM map's partial derivatives in shared memory, and a tiled backward that
// filters those partials once more (the window's adjoint) into the gradient.
//
// Output position (i, j) of a plane sees the input rows i - pad .. i - pad + win - 1
// (zero outside the image): pad = 0 is "valid" filtering, pad = win / 2 "same".
// The moments are those of the shifted plane x' = x - s, y' = y - s (s the
// plane's mean, from plane_shifts): mu'_x, mu'_y, P = E[x'y'], Q = E[(x - y)^2]
// (see fastae/cpu/ssim.py for the formulas, which make identical images give
// exactly 1 and a zero gradient). The forward writes per tile the sum of the map
// (SSIM, or contrast-structure with use_cs) and, with coef, the three maps
// A = dS/dmu'_x, B = dS/dP, C = dS/dQ (and, with maps = 4, A' = dS/dmu'_y); then
// dS/dx = G^T A + y' G^T B + 2 (x - y) G^T C and dS/dy = G^T A' + x' G^T B + 2 (y - x) G^T C.
// Tiles are TW = 32 positions wide and R blockDim.y positions tall; the window
// weights and the tile plus its halo live in dynamic shared memory. WIN is the
// window's length where it is known when compiled (the default 11: every loop
// over the taps unrolls and the tile's indexing folds into constants; the
// kernels are bound by instruction issue), 0 for any length (win_size). R is
// the rows a thread computes in the vertical passes, each row of the
// horizontally filtered tile loaded once for all R (fastae/cuda/ssim.py picks
// WIN and R: instance).
#include "common.cuh"

namespace fastae {

#define FASTAE_TW 32

// The SSIM (or contrast-structure) value of one position from its shifted
// moments (mx, my, p, q) and the shift s, and the partial derivatives (ay: dS/dmu'_y, A with x and y
// swapped, as S is symmetric).
template <typename A>
__device__ __forceinline__ A ssim_at(A mx, A my, A p, A q, A s, A c1, A c2, int use_cs, A& a, A& b, A& c, A& ay) {
    const A one = A(1), two = A(2);
    A d = mx - my, diff = q - d * d;
    A b2 = two * (p - mx * my) + c2 + diff;
    A cs = one - diff / b2;  // (2 cov + C2) / b2, exactly 1 where diff is 0
    if (use_cs) {
        a = two * (mx * cs - my) / b2;
        ay = two * (my * cs - mx) / b2;
        b = two * diff / (b2 * b2);
        c = -cs / b2;
        return cs;
    }
    A ux = mx + s, uy = my + s;
    A b1 = two * ux * uy + c1 + d * d;
    A lum = one - d * d / b1;
    A v = lum * cs;
    a = two * (cs * (uy - lum * ux) / b1 + lum * (mx * cs - my) / b2);
    ay = two * (cs * (ux - lum * uy) / b1 + lum * (my * cs - mx) / b2);
    b = two * lum * diff / (b2 * b2);
    c = -v / b2;
    return v;
}

// One block of 256 threads per plane: shifts[plane] = the mean of x and y over the plane (in double, a
// fixed-order sum).
template <typename T>
__global__ void __launch_bounds__(256) plane_shifts(const T* x, const T* y, index_t size, double* shifts) {
    __shared__ double scratch[256];
    const T* xp = x + blockIdx.x * size;
    const T* yp = y + blockIdx.x * size;
    double v = 0.0;
    for (index_t i = threadIdx.x; i < size; i += blockDim.x) v += (double)to_acc(xp[i]) + (double)to_acc(yp[i]);
    double total = block_sum(v, scratch);
    if (threadIdx.x == 0) shifts[blockIdx.x] = size ? total / (2.0 * (double)size) : 0.0;
}

// grid (tiles across, tiles down, planes); block (32, th / R); dynamic shared
// memory: see forward_shared in fastae/cuda/ssim.py.
// x, y: planes (P, H, W); shifts: (P,); coef: (P, maps, Ho, Wo) or null; tile_sums: (P, tiles).
template <typename T, int WIN, int R>
__global__ void __launch_bounds__(512) ssim_forward(
        const T* x, const T* y, const double* shifts, int h, int w, int ho, int wo, int pad, const double* window,
        int win_size, double c1, double c2, int use_cs, typename Acc<T>::type* coef, int maps, double* tile_sums) {
    typedef typename Acc<T>::type A;
    const int win = WIN ? WIN : win_size;
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    A* g = reinterpret_cast<A*>(shared_bytes);
    const int th = R * blockDim.y, rows = th + win - 1, cols = FASTAE_TW + win - 1;
    A* xs = g + win;                // (rows, cols): the input tile and its halo
    A* ys = xs + rows * cols;
    A* hs = ys + rows * cols;       // (4, rows, TW): the horizontal pass
    __shared__ double scratch[512];
    const int tid = threadIdx.x + FASTAE_TW * threadIdx.y, n_threads = FASTAE_TW * blockDim.y;
    const index_t plane = blockIdx.z;
    const int row0 = blockIdx.y * th, col0 = blockIdx.x * FASTAE_TW;  // first output position of the tile
    const T* xp = x + plane * h * (index_t)w;
    const T* yp = y + plane * h * (index_t)w;
    const A s = A(shifts[plane]);
    for (int k = tid; k < win; k += n_threads) g[k] = A(window[k]);
    for (int k = tid; k < rows * cols; k += n_threads) {  // the shifted tile; outside the image, the shifted zero
        int r = row0 - pad + k / cols, q = col0 - pad + k % cols;
        bool inside = r >= 0 && r < h && q >= 0 && q < w;
        xs[k] = (inside ? to_acc(xp[r * (index_t)w + q]) : A(0)) - s;
        ys[k] = (inside ? to_acc(yp[r * (index_t)w + q]) : A(0)) - s;
    }
    __syncthreads();
    const int plane_size = rows * FASTAE_TW;
    for (int k = tid; k < plane_size; k += n_threads) {
        int r = k / FASTAE_TW, j = k % FASTAE_TW;
        A s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        #pragma unroll
        for (int t = 0; t < win; ++t) {
            A gt = g[t], xv = xs[r * cols + j + t], yv = ys[r * cols + j + t], dv = xv - yv;
            s0 = fma(gt, xv, s0);  // (explicit: contracted as the compiler chose, gt * xv, also a factor
            s1 = fma(gt, yv, s1);  //  of s2, was rounded for s0 and fused for s1, so mu_x != mu_y for x == y)
            s2 = fma(gt * xv, yv, s2);
            s3 = fma(gt * dv, dv, s3);
        }
        hs[k] = s0;
        hs[k + plane_size] = s1;
        hs[k + 2 * plane_size] = s2;
        hs[k + 3 * plane_size] = s3;
    }
    __syncthreads();
    // the R output rows R ty + u of this thread: each row of hs loaded once for all of them
    const int i = row0 + R * threadIdx.y, j = col0 + threadIdx.x;
    A m[R][4] = {};
    #pragma unroll
    for (int t = 0; t < win + R - 1; ++t) {
        const int k = (R * threadIdx.y + t) * FASTAE_TW + threadIdx.x;
        A v[4];
        #pragma unroll
        for (int q = 0; q < 4; ++q) v[q] = hs[k + q * plane_size];
        #pragma unroll
        for (int u = 0; u < R; ++u) {
            if (t - u < 0 || t - u >= win) continue;  // (known when compiled, where WIN is)
            A gt = g[t - u];
            #pragma unroll
            for (int q = 0; q < 4; ++q) m[u][q] = fma(gt, v[q], m[u][q]);
        }
    }
    double value = 0.0;
    #pragma unroll
    for (int u = 0; u < R; ++u) {
        if (i + u >= ho || j >= wo) continue;
        A a, b, c, ay;
        value += ssim_at<A>(m[u][0], m[u][1], m[u][2], m[u][3], s, A(c1), A(c2), use_cs, a, b, c, ay);
        if (coef) {
            const index_t map = ho * (index_t)wo, at = maps * plane * map + (i + u) * (index_t)wo + j;
            coef[at] = a;
            coef[at + map] = b;
            coef[at + 2 * map] = c;
            if (maps == 4) coef[at + 3 * map] = ay;
        }
    }
    double total = block_sum(value, scratch);
    if (tid == 0) tile_sums[plane * gridDim.x * gridDim.y + blockIdx.y * gridDim.x + blockIdx.x] = total;
}

// grid (tiles across, tiles down, planes) over the input; block (32, th / R).
// grad = scales[plane] * (G^T A + y' G^T B + 2 (x - y) G^T C), added to grad with accumulate; with
// maps = 4, tgrad likewise = scales[plane] * (G^T A' + x' G^T B + 2 (y - x) G^T C).
template <typename T, int WIN, int R>
__global__ void __launch_bounds__(512) ssim_backward(
        const T* x, const T* y, const double* shifts, int h, int w, int ho, int wo, int pad, const double* window,
        int win_size, const typename Acc<T>::type* coef, int maps, const double* scales, int accumulate, T* grad,
        T* tgrad) {
    typedef typename Acc<T>::type A;
    const int win = WIN ? WIN : win_size;
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    A* g = reinterpret_cast<A*>(shared_bytes);
    const int th = R * blockDim.y, rows = th + win - 1, cols = FASTAE_TW + win - 1;
    A* cs = g + win;                   // (maps, rows, cols): the coefficient tile and its halo
    A* hs = cs + maps * rows * cols;   // (maps, rows, TW): the horizontal pass
    const int tid = threadIdx.x + FASTAE_TW * threadIdx.y, n_threads = FASTAE_TW * blockDim.y;
    const index_t plane = blockIdx.z;
    const int row0 = blockIdx.y * th, col0 = blockIdx.x * FASTAE_TW;  // first input pixel of the tile
    // input row r receives from output rows r + pad - t, t = 0 .. win - 1
    const int orow0 = row0 + pad - (win - 1), ocol0 = col0 + pad - (win - 1);
    const index_t map = ho * (index_t)wo;
    const A* cp = coef + maps * plane * map;
    for (int k = tid; k < win; k += n_threads) g[k] = A(window[k]);
    for (int k = tid; k < rows * cols; k += n_threads) {
        int i = orow0 + k / cols, j = ocol0 + k % cols;
        bool inside = i >= 0 && i < ho && j >= 0 && j < wo;
        index_t at = i * (index_t)wo + j;
        for (int u = 0; u < maps; ++u) cs[k + u * rows * cols] = inside ? cp[at + u * map] : A(0);
    }
    __syncthreads();
    const int plane_size = rows * FASTAE_TW;
    for (int k = tid; k < plane_size; k += n_threads) {
        int r = k / FASTAE_TW, j = k % FASTAE_TW;
        A s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        #pragma unroll
        for (int t = 0; t < win; ++t) {
            A gt = g[t];
            int at = r * cols + j + (win - 1) - t;
            s0 = fma(gt, cs[at], s0);
            s1 = fma(gt, cs[at + rows * cols], s1);
            s2 = fma(gt, cs[at + 2 * rows * cols], s2);
            if (maps == 4) s3 = fma(gt, cs[at + 3 * rows * cols], s3);
        }
        hs[k] = s0;
        hs[k + plane_size] = s1;
        hs[k + 2 * plane_size] = s2;
        if (maps == 4) hs[k + 3 * plane_size] = s3;
    }
    __syncthreads();
    // the R input rows R ty + u of this thread: row R ty + u takes hs rows R ty + u + (win - 1) - t, each
    // loaded once for all of them
    const int r = row0 + R * threadIdx.y, q = col0 + threadIdx.x;
    if (r >= h || q >= w) return;
    A f[R][4] = {};
    #pragma unroll
    for (int e = 0; e < win + R - 1; ++e) {  // hs row R ty + e
        const int k = (R * threadIdx.y + e) * FASTAE_TW + threadIdx.x;
        A v[4];
        #pragma unroll
        for (int p = 0; p < 4; ++p) v[p] = p < maps ? hs[k + p * plane_size] : A(0);
        #pragma unroll
        for (int u = 0; u < R; ++u) {
            const int t = u + (win - 1) - e;  // (known when compiled, where WIN is)
            if (t < 0 || t >= win) continue;
            A gt = g[t];
            #pragma unroll
            for (int p = 0; p < 4; ++p) f[u][p] = fma(gt, v[p], f[u][p]);
        }
    }
    const A shift = A(shifts[plane]), scale = A(scales[plane]);
    #pragma unroll
    for (int u = 0; u < R; ++u) {
        if (r + u >= h) break;
        const index_t at = (plane * h + r + u) * (index_t)w + q;
        const A xv = to_acc(x[at]), yv = to_acc(y[at]);
        A v = scale * (f[u][0] + (yv - shift) * f[u][1] + A(2) * (xv - yv) * f[u][2]);
        grad[at] = store<T>(accumulate ? to_acc(grad[at]) + v : v);
        if (maps == 4) {
            A uu = scale * (f[u][3] + (xv - shift) * f[u][1] + A(2) * (yv - xv) * f[u][2]);
            tgrad[at] = store<T>(accumulate ? to_acc(tgrad[at]) + uu : uu);
        }
    }
}

// One block of 256 threads per plane: the sum of its tiles, in a fixed order.
__global__ void __launch_bounds__(256) plane_sums(const double* tile_sums, index_t n_tiles, double* sums) {
    __shared__ double scratch[256];
    row_sums(tile_sums, n_tiles, sums, scratch);
}

}  // namespace fastae
