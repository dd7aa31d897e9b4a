"""The hierarchical autoencoder of the theory notes: coarse and fine parts."""
import numpy as np

from fastae._arrays import check_number, check_positive_integer


class HierarchicalAutoencoder:
    """x splits into orthogonal coarse and fine parts, x = C a + F b, with C
    (d, kc) and F (d, kf) orthonormal bases of orthogonal subspaces. The codes
    are z_c = C^T x and z_f = F^T x; the decoder rebuilds each part with a
    learned gain, x_hat = g_c C z_c + g_f F z_f. The loss weighs each scale's
    reconstruction error:

        w_c ||C^T (x - x_hat)||^2 + w_f ||F^T (x - x_hat)||^2   (mean over the batch)

    With w_c > w_f the coarse gain converges first: the model learns the
    coarse structure before the fine corrections.
    """

    def __init__(self, coarse_basis, fine_basis, *, coarse_weight=1.0, fine_weight=0.1, gains=(0.0, 0.0)):
        c, f = np.asarray(coarse_basis, np.float64), np.asarray(fine_basis, np.float64)
        if c.ndim != 2 or f.ndim != 2 or c.shape[0] != f.shape[0]:
            raise ValueError(f"bases must be (d, kc) and (d, kf) with the same d, got {c.shape} and {f.shape}")
        if not (np.isfinite(c).all() and np.isfinite(f).all()):
            raise ValueError("coarse_basis and fine_basis must hold finite values (found NaN or Inf)")
        both = np.hstack([c, f])
        off = np.abs(both.T @ both - np.eye(both.shape[1])).max()
        if off > 1e-6:
            raise ValueError(f"[coarse_basis, fine_basis] must have orthonormal columns: |B^T B - I| = {off:.3g}")
        self.coarse, self.fine = c, f
        self.weights = (check_number(coarse_weight, "coarse_weight", nonnegative=True),
                        check_number(fine_weight, "fine_weight", nonnegative=True))
        self.gains = np.array(gains, dtype=np.float64)
        if self.gains.shape != (2,) or not np.isfinite(self.gains).all():
            raise ValueError(f"gains must be two finite numbers (coarse, fine), got {gains!r}")

    def _rows(self, x):
        """x as float64 rows of the bases' d values ((n, d) or (d,))."""
        x = np.asarray(x, np.float64)
        d = self.coarse.shape[0]
        if x.ndim not in (1, 2) or x.shape[-1] != d:
            raise ValueError(f"x must have shape (n, {d}) or ({d},), got {x.shape}")
        return x

    def encode(self, x):
        x = self._rows(x)
        return x @ self.coarse, x @ self.fine

    def decode(self, zc, zf):
        return self.gains[0] * zc @ self.coarse.T + self.gains[1] * zf @ self.fine.T

    def reconstruct(self, x):
        return self.decode(*self.encode(x))

    def scale_errors(self, x):
        """Mean squared reconstruction error of the coarse and of the fine part."""
        zc, zf = self.encode(x)
        r = self._rows(x) - self.decode(zc, zf)
        return float(np.mean(np.sum((r @ self.coarse) ** 2, axis=1))), float(np.mean(np.sum((r @ self.fine) ** 2, axis=1)))

    def loss_and_grad(self, x):
        """The weighted loss and its gradient w.r.t. the gains (g_c, g_f)."""
        zc, zf = self.encode(x)
        wc, wf = self.weights
        # C^T (x - x_hat) = z_c (1 - g_c) and F^T (x - x_hat) = z_f (1 - g_f): the parts decouple
        ec, ef = np.mean(np.sum(zc ** 2, axis=1)), np.mean(np.sum(zf ** 2, axis=1))
        gc, gf = self.gains
        value = wc * ec * (1 - gc) ** 2 + wf * ef * (1 - gf) ** 2
        grad = np.array([-2 * wc * ec * (1 - gc), -2 * wf * ef * (1 - gf)])
        return float(value), grad

    def fit(self, x, steps=100, lr=0.1):
        """Gradient descent on the gains; returns the per-step (coarse, fine) errors."""
        steps = check_positive_integer(steps, "steps")
        lr = check_number(lr, "lr", positive=True)
        x = self._rows(x)
        history = []
        for _ in range(steps):
            _, grad = self.loss_and_grad(x)
            self.gains -= lr * grad
            history.append(self.scale_errors(x))
        return history
