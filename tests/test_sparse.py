import warnings

import numpy as np
import pytest
import torch

import fastae as fa
from conftest import assert_close
from fastae.bench import LASSO_REGIMES

DTYPES = [np.float32, np.float64]
IDS = ["f32", "f64"]


def soft_reference(c, lam):
    return np.sign(c) * np.maximum(np.abs(c) - lam, 0)


def objective(x, D, z, alpha):
    x, D, z = (np.asarray(a, np.float64) for a in (x, D, z))
    return np.sum((x - z @ D.T) ** 2) + alpha * np.abs(z).sum()


def dictionary(rng, d, k, dtype=np.float64):
    D = rng.standard_normal((d, k))
    return (D / np.linalg.norm(D, axis=0)).astype(dtype)


def signals(rng, D, n, density=0.2, noise=0.05):
    d, k = D.shape
    z = rng.standard_normal((n, k)) * (rng.random((n, k)) < density)
    return (z @ D.T + noise * rng.standard_normal((n, d))).astype(D.dtype)


# ---------------------------------------------------------------- soft-thresholding
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("lam_shape", ["number", "0d", "per_atom", "row_atom", "per_sample", "full"])
def test_soft_threshold_matches_closed_form(rng, dtype, lam_shape):
    c = rng.normal(0, 1, (37, 3, 11)).astype(dtype)
    lam = {"number": 0.4, "0d": np.array(0.4, dtype), "per_atom": rng.random(11).astype(dtype),
           "row_atom": rng.random((1, 3, 11)).astype(dtype), "per_sample": rng.random((37, 1, 1)).astype(dtype),
           "full": rng.random(c.shape).astype(dtype)}[lam_shape]
    codes, mask = fa.soft_threshold(c, lam, grad=True)
    expected = soft_reference(c.astype(np.float64), np.asarray(lam, np.float64))
    assert codes.dtype == dtype and mask.dtype == dtype and codes.shape == c.shape
    assert_close(codes, expected, dtype)
    np.testing.assert_array_equal(mask, (np.abs(c) > lam).astype(dtype))
    np.testing.assert_array_equal(fa.soft_threshold(c, lam), codes)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_soft_threshold_mask_is_the_derivative(rng, dtype):
    """Finite differences, and torch's softshrink under autograd."""
    c = rng.normal(0, 1, 2001)
    lam = 0.3
    c = c[np.abs(np.abs(c) - lam) > 1e-3].astype(dtype)  # away from the kinks
    codes, mask = fa.soft_threshold(c, lam, grad=True)
    h = 1e-3 if dtype == np.float32 else 1e-6
    numeric = (fa.soft_threshold(c + dtype(h), lam) - fa.soft_threshold(c - dtype(h), lam)) / (2 * dtype(h))
    np.testing.assert_allclose(mask, numeric, atol=1e-2 if dtype == np.float32 else 1e-8)
    t = torch.tensor(c.astype(np.float64), requires_grad=True)
    torch.nn.functional.softshrink(t, lam).sum().backward()
    np.testing.assert_array_equal(mask, t.grad.numpy())


def test_soft_threshold_out_layouts_nan_and_torch(rng):
    c = rng.normal(0, 1, (64, 48)).astype(np.float32)
    view = c[::2, ::3]  # non-contiguous
    out = np.empty(view.shape, np.float32)
    assert fa.soft_threshold(view, 0.2, out=out) is out
    assert_close(out, soft_reference(view, 0.2), np.float32)
    inplace = c.copy()
    fa.soft_threshold(inplace, 0.2, out=inplace)  # in place
    assert_close(inplace, soft_reference(c, 0.2), np.float32)
    c[3, 4] = np.nan
    codes, mask = fa.soft_threshold(c, 0.2, grad=True)
    assert np.isnan(codes[3, 4]) and np.isnan(codes).sum() == 1 and mask[3, 4] == 1
    np.testing.assert_array_equal(fa.soft_threshold(c, 0.0)[~np.isnan(c)], c[~np.isnan(c)])
    mask_out = np.full(c.shape, 7.0, np.float32)
    out2 = np.empty_like(c)
    result = fa.soft_threshold(c, 0.2, grad=True, out=out2, mask_out=mask_out)
    assert result.codes is out2 and result.mask is mask_out
    np.testing.assert_array_equal(mask_out, mask)
    with pytest.raises(ValueError, match="mask_out receives the derivative"):
        fa.soft_threshold(c, 0.2, mask_out=mask_out)
    t = fa.soft_threshold(torch.from_numpy(c), torch.full((48,), 0.2))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_array_equal(t.numpy(), codes)


def test_soft_threshold_errors(rng):
    c = rng.random((4, 5)).astype(np.float32)
    with pytest.raises(ValueError, match="lam must be a non-negative"):
        fa.soft_threshold(c, -0.1)
    with pytest.raises(ValueError, match="lam must be non-negative"):
        fa.soft_threshold(c, np.array([0.1, -0.1, 0, 0, 0], np.float32))
    with pytest.raises(ValueError, match=r"lam of shape \(4,\) does not broadcast to c's shape \(4, 5\)"):
        fa.soft_threshold(c, np.ones(4, np.float32))
    with pytest.raises(TypeError, match="mixed dtypes: lam is float64"):
        fa.soft_threshold(c, np.ones(5))
    with pytest.raises(TypeError, match="c must be float32 or float64"):
        fa.soft_threshold(c.astype(np.int32), 0.1)
    with pytest.raises(ValueError, match=r"out has shape \(5, 4\)"):
        fa.soft_threshold(c, 0.1, out=np.empty((5, 4), np.float32))


# ---------------------------------------------------------------- penalties
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_l1_penalty(rng, dtype):
    z = rng.normal(0, 1, (33, 7)).astype(dtype)
    z[0, :3] = 0
    value, g = fa.l1_penalty(z, 0.3, grad=True)
    t = torch.tensor(z.astype(np.float64), requires_grad=True)
    ref = 0.3 * t.abs().sum()
    ref.backward()
    assert_close(value, ref.item(), dtype)
    assert_close(g, t.grad.numpy(), dtype)
    assert (g[0, :3] == 0).all()
    out = np.empty_like(z)
    assert fa.l1_penalty(z, 0.3, grad=True, out=out).grad is out
    assert_close(fa.l1_penalty(z, 0.3), ref.item(), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_l2_penalty_and_fused_weight_decay(rng, dtype):
    w = rng.normal(0, 1, (129, 65)).astype(dtype)[:, ::2]  # odd, non-contiguous
    value, g = fa.l2_penalty(w, 0.01, grad=True)
    assert_close(value, 0.01 * np.sum(w.astype(np.float64) ** 2), dtype)
    assert_close(g, 0.02 * w.astype(np.float64), dtype)
    h = 1e-3 if dtype == np.float32 else 1e-6
    e = np.zeros_like(w)
    e[5, 7] = h
    numeric = (float(fa.l2_penalty(w + e, 0.01)) - float(fa.l2_penalty(w - e, 0.01))) / (2 * h)
    assert abs(numeric - g[5, 7]) <= (1e-3 if dtype == np.float32 else 1e-8)
    grad_buffer = rng.normal(0, 1, w.shape).astype(dtype)
    before = grad_buffer.copy()
    value2 = fa.l2_penalty(w, 0.01, accumulate_into=grad_buffer)
    assert value2.shape == () and float(value2) == float(value)
    assert_close(grad_buffer, before.astype(np.float64) + 0.02 * w, dtype)
    with pytest.raises(ValueError, match="accumulate_into"):
        fa.l2_penalty(w, 0.01, grad=True, accumulate_into=grad_buffer)
    with pytest.raises(ValueError, match="lam must be a non-negative"):
        fa.l2_penalty(w, -1.0)
    with pytest.raises(ValueError, match="accumulate_into must be a writeable C-contiguous"):
        fa.l2_penalty(w, 0.01, accumulate_into=np.zeros(w.shape[::-1], dtype).T)


# ---------------------------------------------------------------- KL sparsity
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_kl_sparsity(rng, dtype):
    h = rng.uniform(0.01, 0.6, (50, 9)).astype(dtype)
    rho, beta = 0.05, 3.0
    value, g = fa.kl_sparsity(h, rho, beta=beta, grad=True)
    t = torch.tensor(h.astype(np.float64), requires_grad=True)
    rho_hat = t.mean(0)
    ref = beta * (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()
    ref.backward()
    assert value.dtype == dtype and g.dtype == dtype
    assert_close(value, ref.item(), dtype)
    assert_close(g, t.grad.numpy(), dtype)
    eps = 1e-6
    e = np.zeros(h.shape)
    e[3, 4] = eps
    h64 = h.astype(np.float64)
    numeric = (float(fa.kl_sparsity(h64 + e, rho, beta=beta)) - float(fa.kl_sparsity(h64 - e, rho, beta=beta))) / (2 * eps)
    assert abs(numeric - t.grad[3, 4].item()) < 1e-7
    # mean activation equal to rho: the penalty and its gradient vanish
    flat = np.full((4, 3), rho, dtype)
    v0, g0 = fa.kl_sparsity(flat, rho, grad=True)
    assert abs(float(v0)) < 1e-6 and np.abs(g0).max() < 1e-5


def test_kl_sparsity_errors():
    h = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match=r"rho must lie in \(0, 1\)"):
        fa.kl_sparsity(h, 1.0)
    with pytest.raises(ValueError, match=r"h must lie in \(0, 1\)"):
        fa.kl_sparsity(np.array([[0.5, 1.0]]), 0.1)
    with pytest.raises(ValueError, match=r"h must have shape \(n, k\)"):
        fa.kl_sparsity(np.full(3, 0.5), 0.1)


# ---------------------------------------------------------------- LASSO codes
def orthonormal(rng, d, k, dtype):
    q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return q.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_lasso_codes_closed_form_and_sklearn(rng, dtype):
    from sklearn.decomposition import sparse_encode
    U = orthonormal(rng, 20, 7, dtype)
    x = rng.normal(0, 1, (31, 20)).astype(dtype)
    alpha = 0.6
    codes = fa.lasso_codes(x, U, alpha)
    assert codes.dtype == dtype and codes.shape == (31, 7)
    assert_close(codes, soft_reference(x.astype(np.float64) @ U, alpha / 2), dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sparse_encode(x.astype(np.float64), U.T.astype(np.float64), algorithm="lasso_cd", alpha=alpha / 2,
                            max_iter=10000)
    np.testing.assert_allclose(codes, ref, atol=1e-5)
    np.testing.assert_allclose(fa.lasso_codes(x[4], U, alpha), codes[4], rtol=1e-6)


def test_lasso_codes_rejects_a_non_orthonormal_dictionary(rng):
    D = dictionary(rng, 20, 7)
    with pytest.raises(ValueError, match=r"U's columns are not orthonormal: \|U\^T U - I\| reaches .* fastae.ista"):
        fa.lasso_codes(rng.normal(size=(3, 20)), D, 0.1)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 20\)"):
        fa.lasso_codes(rng.normal(size=(3, 21)), orthonormal(rng, 20, 7, np.float64), 0.1)


# ---------------------------------------------------------------- ISTA / FISTA
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_ista_reaches_sklearn_objective(rng, dtype):
    from sklearn.decomposition import sparse_encode
    D = dictionary(rng, 64, 48)
    x = signals(rng, D, 2000)
    alpha = 0.2
    codes = fa.ista(x.astype(dtype), D.astype(dtype), alpha)
    assert codes.dtype == dtype and codes.shape == (2000, 48)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sparse_encode(x, D.T, algorithm="lasso_cd", alpha=alpha / 2, n_jobs=1)
    ours, theirs = objective(x, D, codes, alpha), objective(x, D, ref, alpha)
    assert ours <= theirs * (1 + 1e-5)


def fista_reference(x, D, alpha, n_steps, accelerated=True):
    """Plain float64 FISTA with the gradient-test restart, ``n_steps`` steps from zero."""
    L = 2 * np.linalg.norm(D, 2) ** 2
    z = y = np.zeros((x.shape[0], D.shape[1]))
    t = np.ones(x.shape[0])
    for _ in range(n_steps):
        v = y - 2 * ((y @ D.T - x) @ D) / L
        new = np.sign(v) * np.maximum(np.abs(v) - alpha / L, 0)
        restart = np.sum((y - new) * (new - z), axis=1) > 0
        tr = np.where(restart | (not accelerated), 1.0, t)
        t = (1 + np.sqrt(1 + 4 * tr * tr)) / 2
        y, z = new + ((tr - 1) / t)[:, None] * (new - z), new
    return z


def optimality_gap(x, D, z, alpha):
    """How far codes are from the LASSO optimality conditions, relative to alpha/2:
    b - G z must equal alpha/2 sign(z) on the support and stay within alpha/2 off it."""
    x, D, z = (np.asarray(a, np.float64) for a in (x, D, z))
    residual = (x - z @ D.T) @ D
    on = np.abs(residual - alpha / 2 * np.sign(z))[z != 0]
    off = np.maximum(np.abs(residual) - alpha / 2, 0)[z == 0]
    return max(on.max(initial=0), off.max(initial=0)) / (alpha / 2)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("alpha", [0.1, 0.003])  # ~12 and ~28 of 29 atoms used
def test_ista_returns_the_exact_optimum(rng, dtype, alpha):
    """The support polish makes the codes exact: the optimality conditions hold
    to rounding, float64 codes to ~1e-12 although the early steps run in float32."""
    D = dictionary(rng, 37, 29)
    x = signals(rng, D, 301)[::2]  # non-contiguous rows
    codes = fa.ista(x.astype(dtype), D.astype(dtype), alpha)
    gap = optimality_gap(x.astype(dtype), D.astype(dtype), codes, alpha)
    assert gap < (3e-6 / alpha if dtype == np.float32 else 1e-10)  # (float32 codes: rounding against alpha/2)
    assert (codes != 0).any() and (codes == 0).any()


@pytest.mark.parametrize("accelerated", [True, False], ids=["fista", "ista"])
def test_ista_steps_follow_the_reference_iteration(rng, accelerated):
    """Stopped after a few steps (before any polish), the codes are those
    FISTA's (or ISTA's) iterates reach; float64 signals take their first steps
    in float32, so to float32 accuracy."""
    D = dictionary(rng, 40, 24)
    x = signals(rng, D, 64)
    live = int((np.abs(x @ D).max(axis=1) > 0.1).sum())  # the others' codes are 0 at once (|x D| <= alpha / 2)
    for n_steps in (1, 3):
        with pytest.warns(fa.ConvergenceWarning, match=f"ista: {live} of 64 signals still moved by more than "
                                                        f"tol=0 after n_iter={n_steps} iterations; raise n_iter"):
            codes = fa.ista(x, D, 0.2, n_iter=n_steps, tol=0.0, accelerated=accelerated)
        np.testing.assert_allclose(codes, fista_reference(x, D, 0.2, n_steps, accelerated), atol=1e-5)


def test_removing_an_atom_from_the_factor_equals_factoring_without_it(rng):
    """remove_atom (Givens rotations, O(m^2)) leaves the Cholesky factor of G_SS and the solve's right-hand
    side as factoring the support without that atom does, for an atom anywhere in the support."""
    from fastae.cpu.sparse import add_atom, remove_atom
    k = 40
    A = rng.standard_normal((50, k))
    gram, b = A.T @ A, rng.standard_normal(k)
    for m in (1, 2, 7, 29):
        for p in {0, m // 2, m - 1}:
            support, sign = rng.permutation(k)[:m].astype(np.int64), rng.choice([-1.0, 1.0], m)
            factors = []
            for atoms, signs, count in ((support, sign, m), (np.delete(support, p), np.delete(sign, p), m - 1)):
                l, y = np.zeros((k, k)), np.zeros(k)
                for q in range(count):
                    assert add_atom(gram, b, 0.3, atoms, signs, q, l, y)
                factors.append((l, y))
            (l, y), (l_ref, y_ref) = factors
            assert remove_atom(p, m, l, y)
            for q in range(m - 1):
                np.testing.assert_allclose(l[q, :q + 1], l_ref[q, :q + 1], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(y[:m - 1], y_ref[:m - 1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("guess", ["empty", "random", "every_atom"])
def test_exact_solve_walks_to_the_optimum_from_a_poor_guess(rng, guess):
    """The CPU backend's exact solve (behind FISTA's polish and coordinate
    descent) walks from a support guess to the optimum by active-set steps:
    from no atom it must add each of the ~20 the optimum uses, from every atom
    drop ~28, from a random guess both (a few corrections cannot)."""
    from fastae.cpu.sparse import solve_on_support
    D = dictionary(rng, 64, 48)
    alpha = 0.2
    for x in signals(rng, D, 5, density=0.4):
        b, gram = D.T @ x, D.T @ D
        k = gram.shape[0]
        support = {"empty": np.zeros(0, np.int64), "every_atom": np.arange(k),
                   "random": rng.permutation(k)[:20]}[guess]
        m = support.size
        sign = np.where(b[support] > 0, 1.0, -1.0) if guess != "random" else rng.choice([-1.0, 1.0], m)
        padded = lambda a, dtype=np.float64: np.concatenate([a, np.zeros(k - m, dtype)])  # noqa: E731
        support, sign, at = padded(support, np.int64), padded(sign), padded(0.01 * sign[:m])
        u, y, x_s, residual = np.empty((k, k)), np.empty(k), np.empty(k), np.empty(k)
        exact, size = solve_on_support(gram, b, alpha / 2, alpha / 2 * (1 + 1e-8), support, sign, m, at, u, y, x_s,
                                       residual, np.zeros(k, np.bool_))
        assert exact
        z = np.zeros(k)
        z[support[:size]] = x_s[:size]
        assert optimality_gap(x[None], D, z[None], alpha) < 1e-10
        assert 10 <= size <= 30


def test_ista_with_duplicate_atoms_converges_by_iterating(rng):
    """Two equal atoms make G_SS singular on supports holding both: the polish
    cannot solve those signals, which then converge by the float64 iterations."""
    D = dictionary(rng, 30, 16)
    D = np.concatenate([D, D[:, :3]], axis=1)
    x = signals(rng, D[:, :16], 80)
    codes = fa.ista(x, D, 0.1, n_iter=5000, tol=1e-10)
    assert optimality_gap(x, D, codes, 0.1) < 1e-5
    assert objective(x, D, codes, 0.1) <= objective(x, D[:, :16], fa.ista(x, D[:, :16], 0.1), 0.1) * (1 + 1e-9)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("atoms", [10, 40], ids=["fista", "coordinate_descent"])
def test_ista_propagates_nan_and_inf_per_signal(rng, dtype, atoms):
    D = dictionary(rng, 20, atoms, dtype)
    x = signals(rng, D, 6)
    x[1, 3], x[4, 0] = np.nan, -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stopped at once: no ConvergenceWarning, no RuntimeWarning
        codes = fa.ista(x, D, 0.1)
    assert not np.isfinite(codes[[1, 4]]).any()
    clean = [0, 2, 3, 5]
    # the same codes as without the bad signals (to the rounding of x D, which BLAS blocks by batch size)
    np.testing.assert_allclose(codes[clean], fa.ista(x[clean], D, 0.1), rtol=1e-5 if dtype == np.float32 else 1e-12)


SCALES = {np.float32: [1e-30, 1e-20, 1e20, 1e35], np.float64: [1e-300, 1e-150, 1e150, 1e300]}


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("atoms", [12, 40], ids=["fista", "coordinate_descent"])
@pytest.mark.parametrize("scaled", ["x", "D"])
def test_ista_is_exact_at_any_scale_of_the_signals_or_the_dictionary(rng, dtype, atoms, scaled):
    """codes(s x, D, s alpha) = s codes(x, D, alpha) and codes(x, s D, s alpha) = codes(x, D, alpha) / s: at
    any finite scale the codes are the optimum (no square overflows or underflows: float32 signals of 1e20
    gave codes off by 0.9, float64 ones of 1e200 too, a float64 dictionary of 1e20 NaN, a float32 one of
    1e30 a LinAlgError)."""
    D = dictionary(rng, 20, atoms)
    x = signals(rng, D, 40)
    alpha = 0.05
    unit = fa.ista(x.astype(dtype), D.astype(dtype), alpha, n_iter=1000)  # (100 leave a signal in ~40 unsettled)
    for s in SCALES[dtype]:
        xs, Ds = (x * s, D) if scaled == "x" else (x, D * s)
        xs, Ds = xs.astype(dtype), Ds.astype(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no ConvergenceWarning, no RuntimeWarning
            codes = fa.ista(xs, Ds, alpha * s, n_iter=1000)
        assert codes.dtype == dtype and np.isfinite(codes).all()
        assert optimality_gap(xs, Ds, codes, alpha * s) < (1e-4 if dtype == np.float32 else 1e-10)
        back = codes.astype(np.float64) / s if scaled == "x" else codes.astype(np.float64) * s
        # (float32: s x rounds otherwise than x, which moves an overcomplete dictionary's codes by ~2e-5)
        np.testing.assert_allclose(back, unit, rtol=0, atol=1e-4 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("atoms", [12, 40], ids=["fista", "coordinate_descent"])
def test_ista_solves_a_float32_batch_of_signals_of_any_sizes_together(rng, atoms):
    """Signals of 1e-20, 1 and 1e20 in one float32 batch, alpha small beside all: each group of like size is
    solved at its own power-of-two scale (one scale for the batch would push the small ones below float32's
    range). With fewer atoms than dimensions the optimum is unique and well conditioned: each signal's codes
    are float64's on the same data, to float32's rounding. With more, the optima use all or nearly all 20
    dimensions (alpha is 1e-2 of the small signals, below float32's resolution of the others' fit): G_SS is
    nearly singular, so the codes move with float32's rounding of x D, and some signals stop by ``tol`` (see
    the next test); each signal's objective, taken at its own scale, is float64's."""
    D = dictionary(rng, 20, atoms, np.float32)
    x = signals(rng, D, 30).astype(np.float64) * np.repeat([1e-20, 1.0, 1e20], 10)[:, None]
    x32 = x.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error" if atoms < 20 else "ignore")
        codes = fa.ista(x32, D, 1e-22, n_iter=1000)
        exact = fa.ista(x32.astype(np.float64), D.astype(np.float64), 1e-22, n_iter=1000)
    assert np.isfinite(codes).all()
    if atoms < 20:
        size = np.abs(exact).max(axis=1, keepdims=True)
        np.testing.assert_allclose(codes / size, exact / size, rtol=0, atol=1e-4)
        return
    norms = np.linalg.norm(x32.astype(np.float64), axis=1)

    def at_unit_scale(z):  # objective(x / |x|, D, z / |x|, alpha / |x|) = objective(x, D, z, alpha) / |x|^2
        return np.array([objective(x32[i] / norms[i], D, z[i] / norms[i], 1e-22 / norms[i]) for i in range(30)])
    np.testing.assert_allclose(at_unit_scale(codes), at_unit_scale(exact), rtol=0, atol=1e-5)
    assert (at_unit_scale(exact)[:10] > 1e-3).all()  # (the small signals' codes are shrunk: alpha is felt)


def test_ista_of_float32_signals_near_the_largest_float(rng):
    """x D overflows float32 for |x| ~ 3e38 and atoms of norm 8 (codes of ~x / 8): the product is taken
    again from x scaled by a power of two, and the codes are float64's, rounded."""
    D = 8 * dictionary(rng, 20, 12)
    x = signals(rng, D, 8)
    x = x / np.abs(x).max() * 3e38
    with np.errstate(over="ignore"):
        assert not np.isfinite(x.astype(np.float32) @ D.astype(np.float32)).all()
    codes = fa.ista(x.astype(np.float32), D.astype(np.float32), 1e37)
    exact = fa.ista(x, D, 1e37)
    assert np.isfinite(codes).all() and (codes != 0).any()
    np.testing.assert_allclose(codes, exact, rtol=0, atol=1e-5 * np.abs(exact).max())


def test_ista_on_image_patches_with_a_patch_dictionary():
    """A coherent dictionary (patches of the same image): the harder case."""
    from skimage import data
    from sklearn.decomposition import sparse_encode
    from sklearn.feature_extraction.image import extract_patches_2d
    patches = extract_patches_2d(data.camera() / 255.0, (8, 8), max_patches=2048, random_state=0).reshape(-1, 64)
    patches -= patches.mean(axis=1, keepdims=True)
    x, D = patches[:2000], patches[2000:].T.copy()
    D /= np.linalg.norm(D, axis=0)
    codes = fa.ista(x, D, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sparse_encode(x, D.T, algorithm="lasso_cd", alpha=0.05, n_jobs=1)
    assert objective(x, D, codes, 0.1) <= objective(x, D, ref, 0.1) * (1 + 1e-5)


def test_ista_finds_the_closed_form_for_an_orthonormal_dictionary(rng):
    U = orthonormal(rng, 16, 10, np.float64)
    x = rng.normal(0, 1, (40, 16))
    for accelerated in (True, False):
        codes = fa.ista(x, U, 0.5, accelerated=accelerated, n_iter=500, tol=1e-12)
        np.testing.assert_allclose(codes, fa.lasso_codes(x, U, 0.5), atol=1e-10)


def test_ista_without_penalty_is_least_squares(rng):
    D = dictionary(rng, 30, 12)
    x = rng.normal(0, 1, (5, 30))
    codes = fa.ista(x, D, 0.0, n_iter=5000, tol=1e-13)
    lstsq = np.linalg.lstsq(D, x.T, rcond=None)[0].T
    np.testing.assert_allclose(codes, lstsq, atol=1e-8)


def test_ista_plain_and_accelerated_agree_and_single_signal(rng):
    D = dictionary(rng, 24, 16)
    x = signals(rng, D, 50)
    fast = fa.ista(x, D, 0.1, n_iter=2000, tol=1e-12)
    slow = fa.ista(x, D, 0.1, accelerated=False, n_iter=20000, tol=1e-12)
    np.testing.assert_allclose(fast, slow, atol=1e-7)
    np.testing.assert_allclose(fa.ista(x[7], D, 0.1, n_iter=2000, tol=1e-12), fast[7], atol=1e-9)
    # a zero dictionary codes nothing; a zero signal gives zero codes
    assert (fa.ista(x, np.zeros_like(D), 0.1) == 0).all()
    assert (fa.ista(np.zeros_like(x), D, 0.1) == 0).all()


def test_ista_errors(rng):
    D = dictionary(rng, 8, 4)
    with pytest.raises(ValueError, match=r"D must have shape \(d, k\)"):
        fa.ista(np.zeros((2, 8)), np.zeros(8), 0.1)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 8\) or \(8,\)"):
        fa.ista(np.zeros((2, 9)), D, 0.1)
    with pytest.raises(ValueError, match="n_iter must be a positive integer"):
        fa.ista(np.zeros((2, 8)), D, 0.1, n_iter=0)
    with pytest.raises(ValueError, match="alpha must be a non-negative"):
        fa.ista(np.zeros((2, 8)), D, -0.1)
    with pytest.raises(TypeError, match="mixed dtypes: D is float32"):
        fa.ista(np.zeros((2, 8)), D.astype(np.float32), 0.1)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_ista_solves_orthonormal_dictionaries_in_closed_form(rng, dtype, monkeypatch):
    """D^T D = I: the exact codes are soft(x D, alpha / 2), with no iteration at all."""
    from fastae.bench import dct_dictionary
    d = dct_dictionary().astype(dtype)
    x = rng.standard_normal((300, 64)).astype(dtype)
    import fastae.cpu.backend
    monkeypatch.setattr(fastae.cpu.backend, "lasso", lambda *a: pytest.fail("iterated"))
    np.testing.assert_array_equal(fa.ista(x, d, 0.3), fa.lasso_codes(x, d, 0.3))


def test_ista_finds_all_zero_codes_by_one_product(rng):
    """z = 0 is optimal exactly where |x D|_inf <= alpha / 2: those signals are never iterated."""
    D = dictionary(rng, 30, 20)
    x = rng.standard_normal((200, 30))
    alpha = 2 * np.quantile(np.abs(x @ D).max(axis=1), 0.5)  # half the signals have zero codes
    zero = np.abs(x @ D).max(axis=1) <= alpha / 2
    codes = fa.ista(x, D, alpha, n_iter=2000, tol=1e-12)
    assert zero.sum() > 50 and not codes[zero].any() and codes[~zero].any(axis=1).all()
    assert optimality_gap(x, D, codes, alpha) < 1e-8


@pytest.mark.parametrize("regime", range(LASSO_REGIMES))
def test_ista_reaches_scikit_learns_objective_in_every_regime(regime):
    """The regimes of fastae bench (none built to suit a solver), 400 signals each."""
    from sklearn.decomposition import sparse_encode
    from fastae.bench import lasso_objective, lasso_problems
    name, x, d, alpha = lasso_problems(n=400)[regime]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sparse_encode(x, d.T, algorithm="lasso_cd", alpha=alpha / 2, n_jobs=1, max_iter=10000)
    ours = fa.ista(x, d, alpha, n_iter=2000)
    assert lasso_objective(x, d, alpha, ours) <= lasso_objective(x, d, alpha, ref) * (1 + 1e-5), name


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_ista_with_more_atoms_than_dimensions_is_exact_for_any_threads_and_batch(rng, dtype, monkeypatch):
    """G singular (70 atoms in 30 dimensions): coordinate descent with exact solves on the support. Each
    signal is solved alone: the codes do not depend on the threads nor on the other signals. (At smaller
    alpha some optima use all 30 dimensions, where G_SS is ill conditioned or singular: those signals stop
    by ``tol``, as scikit-learn's do, short of exact.)"""
    import fastae.cpu.sparse as cpu_sparse
    D = dictionary(rng, 30, 70, dtype)
    x = rng.standard_normal((301, 30)).astype(dtype)[::2]  # non-contiguous rows
    monkeypatch.setattr(cpu_sparse, "fista", lambda *a: pytest.fail("FISTA on a singular G"))
    monkeypatch.setattr(cpu_sparse, "THREADS_FROM", 0)
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")
    codes = fa.ista(x, D, 1.0)
    gap = optimality_gap(x, D, codes, 1.0)
    assert gap < (3e-6 if dtype == np.float32 else 1e-10)
    assert 3 < (codes != 0).sum(axis=1).mean() < 25
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    np.testing.assert_array_equal(fa.ista(x, D, 1.0), codes)
    np.testing.assert_array_equal(fa.ista(x[17:40], D, 1.0), codes[17:40])
    # (one signal: x D is a matrix-vector product, which BLAS rounds otherwise)
    np.testing.assert_allclose(fa.ista(x[5], D, 1.0), codes[5], rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_ista_coordinate_descent_descends_sweep_by_sweep(rng):
    """Every coordinate step lowers the objective: cut off after 1, 2, 3 sweeps, the objective falls, and
    the signals not done are counted in the warning."""
    D = dictionary(rng, 20, 50)
    x = rng.standard_normal((40, 20))
    values = []
    for n_iter in (1, 2, 3):
        with pytest.warns(fa.ConvergenceWarning, match=rf"ista: \d+ of 40 signals still moved by more than "
                                                       rf"tol=0 after n_iter={n_iter} iterations; raise n_iter"):
            values.append(objective(x, D, fa.ista(x, D, 0.3, n_iter=n_iter, tol=0.0), 0.3))
    final = objective(x, D, fa.ista(x, D, 0.3), 0.3)
    assert values[0] > values[1] > values[2] > final
    assert values[0] < objective(x, D, np.zeros((40, 50)), 0.3)


def test_run_tasks_runs_every_task_once_on_each_thread_count(monkeypatch):
    from fastae.cpu._threads import run_tasks
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("NUMBA_NUM_THREADS", threads)
        seen = []
        run_tasks(seen.append, 57)
        assert sorted(seen) == list(range(57))
