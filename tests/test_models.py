import json

import numpy as np
import pytest

from fastae import datasets
from fastae.cli import main as cli
from fastae.models import Autoencoder, HierarchicalAutoencoder
from fastae.train import non_dominated

CONFIGS = {
    "bce": dict(loss="bce"),
    "mse_tied_hidden": dict(loss="mse", tied=True, hidden=(7,), activation="tanh"),
    "l1_leaky": dict(loss="l1", activation="leaky_relu", output_activation="identity"),
    "ssim": dict(loss="ssim", image_shape=(4, 5)),
    "mixed_wd": dict(loss="mixed", alpha=0.3, image_shape=(4, 5), weight_decay=0.01, hidden=(6,)),
    "kl": dict(loss="bce", sparsity=("kl", 0.1, 0.5)),
    "l1_codes": dict(loss="mse", sparsity=("l1", 0.01), activation="sigmoid"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_match_finite_differences(rng, name):
    model = Autoencoder(20, 5, bias_init=0.05, dtype=np.float64, seed=3, **CONFIGS[name])
    x = rng.random((6, 20))
    value, grads = model.gradients(x)
    assert abs(value - model.loss(x)) < 1e-12
    for p, g in zip(model.params, grads):
        assert g.shape == p.shape
        for idx in list(np.ndindex(p.shape))[:: max(1, p.size // 4)]:
            old = p[idx]
            p[idx] = old + 1e-6
            up = model.loss(x)
            p[idx] = old - 1e-6
            down = model.loss(x)
            p[idx] = old
            assert abs((up - down) / 2e-6 - g[idx]) < 1e-6 * max(1.0, abs(g[idx])), (name, idx)


def test_tied_weights_save_d_times_k_and_training_loss_falls():
    train, val, shape = datasets.digits()
    untied = Autoencoder(64, 16)
    tied = Autoencoder(64, 16, tied=True)
    assert untied.n_params - tied.n_params == 64 * 16
    history = tied.fit(train, epochs=4, batch_size=64, lr=3e-3, validation=val, progress=False)
    losses = [h["train_loss"] for h in history]
    assert losses[-1] < 0.8 * losses[0] and history[-1]["val_loss"] < history[0]["val_loss"]


def test_sparse_codes_are_mostly_zero():
    train, val, _ = datasets.digits()
    dense = Autoencoder(64, 32, loss="mse", bias_init=0.01)
    sparse = Autoencoder(64, 32, loss="mse", bias_init=0.01, sparsity=("l1", 0.05))
    for m in (dense, sparse):
        m.fit(train, epochs=5, batch_size=64, lr=3e-3, progress=False)
    assert (sparse.encode(val) == 0).mean() > 0.6
    assert (sparse.encode(val) == 0).mean() > (dense.encode(val) == 0).mean() + 0.2


def test_dead_units_are_reported_and_save_load_round_trips(tmp_path, rng):
    model = Autoencoder(10, 4, loss="mse", hidden=(6,))
    model.enc_b[0][2] = -100.0  # hidden unit 2 can never fire
    x = rng.random((50, 10)).astype(np.float32)
    assert model.dead_units(x)[0] >= 1
    model.save(tmp_path / "ae.npz")
    again = Autoencoder.load(tmp_path / "ae.npz")
    np.testing.assert_array_equal(again.reconstruct(x), model.reconstruct(x))
    assert again.config == model.config


def test_bad_configurations():
    with pytest.raises(ValueError, match="image_shape"):
        Autoencoder(16, 4, loss="ssim")
    with pytest.raises(ValueError, match="needs alpha"):
        Autoencoder(16, 4, loss="mixed", image_shape=(4, 4))
    with pytest.raises(ValueError, match="output_activation='sigmoid'"):
        Autoencoder(16, 4, loss="bce", output_activation="tanh")
    # sizes, dtype and alpha (k=0 and alpha with loss='mse' were taken; hidden=[-1] was NumPy's
    # 'negative dimensions are not allowed')
    for kwargs, error, message in (({"k": 0}, ValueError, "k must be a positive integer, got 0"),
                                   ({"d": 16.0}, ValueError, "d must be a positive integer, got 16.0"),
                                   ({"hidden": [8, -1]}, ValueError, "hidden sizes must be positive integers, got -1"),
                                   ({"dtype": np.float16}, TypeError, "dtype must be float32 or float64"),
                                   ({"loss": "mse", "alpha": 0.3}, ValueError, "loss='mixed' only")):
        with pytest.raises(error, match=message):
            Autoencoder(**{"d": 16, "k": 4, **kwargs})


def test_inputs_of_the_wrong_width_name_the_argument(rng):
    """A batch of the wrong width was NumPy's matmul message ('mismatch in its core dimension'), an empty
    one trained on nothing."""
    model = Autoencoder(16, 4, loss="mse")
    for call, message in ((lambda: model.reconstruct(rng.random((3, 15))), r"x must have shape \(n, 16\)"),
                          (lambda: model.decode(rng.random((3, 5))), r"z must have shape \(n, 4\)"),
                          (lambda: model.loss(rng.random((2, 3, 16))), r"x must have shape \(n, 16\)"),
                          (lambda: model.fit(np.zeros((0, 16)), progress=False), "x must hold rows to train on"),
                          (lambda: model.fit(rng.random((8, 16)), validation=rng.random((2, 9)), progress=False),
                           r"validation must have shape \(n, 16\)")):
        with pytest.raises(ValueError, match=message):
            call()
    assert model.reconstruct(rng.random(16)).shape == (16,)


def test_hierarchical_reconstructs_coarse_before_fine(rng):
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    coarse, fine = q[:, :4], q[:, 4:]
    x = rng.standard_normal((200, 4)) @ coarse.T + 0.5 * rng.standard_normal((200, 12)) @ fine.T
    model = HierarchicalAutoencoder(coarse, fine, coarse_weight=1.0, fine_weight=0.1)
    start_c, start_f = model.scale_errors(x)
    history = model.fit(x, steps=60, lr=0.05)
    c, f = np.array(history).T
    half_c = np.argmax(c < 0.5 * start_c)
    half_f = np.argmax(f < 0.5 * start_f)
    assert half_c < half_f  # the coarse error halves first
    assert c[-1] < 1e-3 * start_c and f[-1] < 0.5 * start_f
    np.testing.assert_allclose(model.reconstruct(x), x, atol=0.5)
    with pytest.raises(ValueError, match="orthonormal"):
        HierarchicalAutoencoder(coarse, coarse)
    # weights, gains, steps, lr and the width of x are checked, naming each (negative or NaN weights, steps=0
    # and lr=NaN were taken; a wrong width was NumPy's matmul message)
    for make, message in ((lambda: HierarchicalAutoencoder(coarse, fine, fine_weight=float("nan")), "fine_weight"),
                          (lambda: HierarchicalAutoencoder(coarse, fine, coarse_weight=-1), "coarse_weight"),
                          (lambda: HierarchicalAutoencoder(coarse, fine, gains=(0, 0, 0)), "gains"),
                          (lambda: model.fit(x, steps=0), "steps"), (lambda: model.fit(x, lr=float("nan")), "lr"),
                          (lambda: model.reconstruct(x[:, :15]), r"x must have shape \(n, 16\)")):
        with pytest.raises(ValueError, match=message):
            make()


def test_datasets_are_split_by_image_and_in_range():
    train, val, shape = datasets.patches(size=16, per_image=50)
    assert shape == (16, 16) and train.shape == (50 * len(datasets.TRAIN_IMAGES), 256)
    assert val.shape == (50 * len(datasets.VALIDATION_IMAGES), 256)
    assert not set(datasets.TRAIN_IMAGES) & set(datasets.VALIDATION_IMAGES)
    for a in (train, val):
        assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    train, val, shape = datasets.digits()
    assert shape == (8, 8) and len(train) + len(val) == 1797 and train.max() <= 1


def test_non_dominated():
    assert non_dominated([(1, 5), (2, 2), (3, 3), (5, 1), (2, 2.5)]) == [0, 1, 3]


def test_train_and_pareto_commands(tmp_path):
    out = tmp_path / "train"
    assert cli(["train", "--quick", "--data", "digits", "--epochs", "4", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    assert metrics["config"]["loss"] == "mixed" and len(metrics["history"]) == 4
    assert set(metrics["history"][0]) >= {"epoch", "train_loss", "val_loss", "val_psnr", "val_ssim", "dead_units"}
    assert history[-1]["val_ssim"] > history[0]["val_ssim"]
    assert metrics["pca"]["code"] == 32 and set(metrics["pca"]) >= {"val_psnr", "val_ssim", "val_mse", "val_l1"}
    assert 0 < metrics["timing"]["samples_per_second"] and abs(sum(metrics["timing"]["share"].values()) - 1) < 1e-6
    for png in ("reconstructions.png", "loss.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "pareto"
    cli(["pareto", "--quick", "--data", "digits", "--epochs", "2", "--alphas", "0,0.5,1", "--out", str(out)])
    pareto = json.loads((out / "pareto.json").read_text())
    assert [p["alpha"] for p in pareto["points"]] == [0, 0.5, 1]
    assert any(p["non_dominated"] for p in pareto["points"])
    assert pareto["pca"]["code"] == 32 and 0 < pareto["pca"]["one_minus_ssim"] < 1
    assert (out / "pareto.png").exists()


def test_pca_baseline_is_the_exact_projection(rng):
    from fastae.train import PCA
    x = rng.standard_normal((500, 12)) @ rng.standard_normal((12, 12))
    pca = PCA(x, 4)
    _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    projector = vt[:4].T @ vt[:4]
    np.testing.assert_allclose(pca.reconstruct(x), (x - x.mean(axis=0)) @ projector + x.mean(axis=0), atol=1e-9)


def test_the_quick_main_job_beats_pca_with_half_its_code(tmp_path):
    """fastae train --quick (default flags): validation SSIM and PSNR at least PCA's with 16 numbers a patch,
    no dead units (the issue's bar, measured on the same split)."""
    from fastae import datasets
    from fastae.train import pca_baseline
    out = tmp_path / "quick"
    assert cli(["train", "--quick", "--out", str(out)]) == 0
    final = json.loads((out / "metrics.json").read_text())["final"]
    train, val, shape = datasets.patches(size=16, per_image=1000)
    pca16, _ = pca_baseline(train, val, 16, shape)
    assert final["val_ssim"] >= pca16["val_ssim"] and final["val_psnr"] >= pca16["val_psnr"]
    assert final["dead_units"] == [0]
