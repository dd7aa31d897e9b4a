"""The main job: train an autoencoder on real images (``fastae train``) and
measure the pixel/structure Pareto front of the mixed loss (``fastae pareto``).

Every run also fits PCA with the same code size on the same training split (the
linear baseline anyone in the field runs first: mean removed, reconstructions
clipped to [0, 1]) and reports it beside the model, on the same validation
images and with the same metrics.
"""
import json
import os
import time

import numpy as np

import fastae as fa
from . import datasets
from .models import Autoencoder
from .models.autoencoder import CLOCK
from .warm import compiling

# The defaults fastae train measured best (see the README): PCA-like structure (inputs centred, a linear
# code, a linear output that starts at the mean patch), leaky ReLUs (no dead units) with He's
# initialisation, Adam at 5e-3 decayed along a cosine, batches of 64, and mostly L1 in the mixed loss.
DEFAULTS = dict(data="patches", loss="mixed", alpha=0.84, tied=False, epochs=30, batch_size=64, lr=5e-3,
                code=32, hidden=[128], activation="leaky_relu", code_activation="identity",
                output_activation="identity", center=True, schedule="cosine", sparsity=None, weight_decay=0.0,
                bias_init=0.01, seed=0, quick=False)


def load_data(name, quick):
    if name == "digits":
        return datasets.digits()
    return datasets.patches(size=16, per_image=1000 if quick else 3000)


def images_metrics(recon, val, shape):
    """PSNR (dB, images in [0, 1]), SSIM (same padding), L1 and MSE of reconstructions, clipped to [0, 1]."""
    recon = np.clip(recon, 0.0, 1.0)
    mse = float(np.mean((recon - val) ** 2, dtype=np.float64))
    images = (-1, 1, *shape)
    ssim = float(fa.ssim(recon.reshape(images).astype(np.float32), val.reshape(images).astype(np.float32),
                         padding="same"))
    return {"val_psnr": 10 * np.log10(1.0 / max(mse, 1e-12)), "val_ssim": ssim, "val_mse": mse,
            "val_l1": float(np.mean(np.abs(recon - val), dtype=np.float64))}


def evaluate(model, val, shape):
    """The validation loss and the metrics of the model's reconstructions."""
    return {"val_loss": model.loss(val), **images_metrics(model.reconstruct(val), val, shape)}


class PCA:
    """Principal components of the training rows (mean removed), from the d x d covariance (milliseconds)."""

    def __init__(self, x, k):
        x = np.asarray(x, np.float64)
        self.mean = x.mean(axis=0)
        centred = x - self.mean
        if len(x) < x.shape[1]:  # fewer rows than dimensions (large crops): the SVD of the rows is cheaper
            self.components = np.linalg.svd(centred, full_matrices=False)[2][:k].T
        else:
            values, vectors = np.linalg.eigh(centred.T @ centred)
            self.components = vectors[:, ::-1][:, :k]  # (d, k), largest variance first

    def reconstruct(self, x):
        return (x - self.mean) @ self.components @ self.components.T + self.mean


def pca_baseline(train_x, val_x, k, shape):
    """PCA with code size k: its validation metrics and reconstructions."""
    start = time.perf_counter()
    pca = PCA(train_x, k)
    recon = pca.reconstruct(val_x)
    return {"code": k, "seconds": time.perf_counter() - start, **images_metrics(recon, val_x, shape)}, recon


def build(config, shape):
    d = int(np.prod(shape))
    return Autoencoder(d, config["code"], hidden=config["hidden"], tied=config["tied"], loss=config["loss"],
                       alpha=config["alpha"] if config["loss"] == "mixed" else None, image_shape=shape,
                       sparsity=config["sparsity"],
                       weight_decay=config["weight_decay"], seed=config["seed"], bias_init=config["bias_init"],
                       activation=config["activation"], code_activation=config["code_activation"],
                       output_activation=config["output_activation"], center=config["center"])


def train(config, progress=True):
    """Train one model; returns (model, history, validation data, image shape, the training data, timing)."""
    config = {**DEFAULTS, **config}
    train_x, val_x, shape = load_data(config["data"], config["quick"])
    with compiling("the kernels of this model's training step"):  # (a scratch model's step: a first run compiles)
        scratch = build(config, shape)
        scratch.fit(train_x[:2 * config["batch_size"]], epochs=1, batch_size=config["batch_size"], lr=config["lr"],
                    progress=False, schedule=config["schedule"])
        evaluate(scratch, val_x[:8], shape)
    model = build(config, shape)
    history = []
    evaluation = [0.0]

    def record(entry):
        start = time.perf_counter()
        metrics = evaluate(model, val_x, shape)
        dead = model.dead_units(val_x)
        history.append({"epoch": entry["epoch"], "train_loss": entry["train_loss"], "dead_units": dead,
                        **{k: float(v) for k, v in metrics.items()}})
        evaluation[0] += time.perf_counter() - start
    CLOCK.clear()
    start = time.perf_counter()
    model.fit(train_x, epochs=config["epochs"], batch_size=config["batch_size"], lr=config["lr"],
              progress=progress, on_epoch=record, schedule=config["schedule"])
    steps = time.perf_counter() - start - evaluation[0]
    timing = throughput(steps, config["epochs"] * len(train_x), evaluation[0])
    return model, history, val_x, shape, train_x, timing


def throughput(steps, samples, evaluation):
    """Samples per second of the training steps, the share of their time in each part, and the seconds
    spent evaluating on the validation split after each epoch (apart)."""
    parts = {part: CLOCK[part] for part in ("loss", "products", "activations", "optimizer")}
    parts["python and the rest"] = max(0.0, steps - sum(parts.values()))
    return {"step_seconds": steps, "evaluation_seconds": evaluation, "samples_per_second": samples / steps,
            "share": {part: value / steps for part, value in parts.items()}}


def _grid(images, shape, columns):
    rows = -(-len(images) // columns)
    h, w = shape
    canvas = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1))
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = im.reshape(shape)
    return canvas


def write_outputs(out, config, model, history, val_x, shape, pca, pca_recon, timing):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"config": config, "final": history[-1], "pca": pca, "timing": timing, "history": history}, f,
                  indent=2)
    n = 12
    pictures = np.concatenate([val_x[:n], np.clip(model.reconstruct(val_x[:n]), 0, 1), np.clip(pca_recon[:n], 0, 1)])
    grid = np.kron(_grid(pictures, shape, n), np.ones((6, 6)))  # nearest-neighbour, large enough to see
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 60, grid.shape[0] / 60 + 0.5), dpi=100)
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([(shape[0] + 1) * 6 * (r + 0.5) for r in range(3)],
                  ["original", f"model (k={config['code']})", f"PCA (k={pca['code']})"])
    ax.set_xticks([])
    fig.tight_layout()
    fig.savefig(os.path.join(out, "reconstructions.png"))
    plt.close(fig)
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    axes[0].plot(epochs, [h["train_loss"] for h in history], label="train")
    axes[0].plot(epochs, [h["val_loss"] for h in history], label="validation")
    axes[0].set_ylabel(f"{config['loss']} loss")
    for ax, key, label in ((axes[1], "val_psnr", "validation PSNR (dB)"), (axes[2], "val_ssim", "validation SSIM")):
        ax.plot(epochs, [h[key] for h in history], label="model")
        ax.axhline(pca[key], color="C3", linestyle="--", label=f"PCA, k={pca['code']}")
        ax.set_ylabel(label)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss.png"), dpi=100)
    plt.close(fig)


def run_train(args):
    if args.model == "conv":
        return run_conv(args)
    config = {k: getattr(args, k) for k in DEFAULTS}
    if config["loss"] != "mixed":
        config["alpha"] = None
    start = time.perf_counter()
    model, history, val_x, shape, train_x, timing = train(config)
    pca, pca_recon = pca_baseline(train_x, val_x, config["code"], shape)
    write_outputs(args.out, config, model, history, val_x, shape, pca, pca_recon, timing)
    last = history[-1]
    share = ", ".join(f"{part} {100 * value:.0f}%" for part, value in timing["share"].items())
    print(f"trained {model.n_params} parameters in {time.perf_counter() - start:.1f} s "
          f"({timing['samples_per_second']:.0f} samples/s; {share})\n"
          f"validation   model (k={config['code']}): PSNR {last['val_psnr']:.2f} dB, SSIM {last['val_ssim']:.4f}, "
          f"MSE {last['val_mse']:.5f}; dead units {last['dead_units']}\n"
          f"             PCA   (k={pca['code']}): PSNR {pca['val_psnr']:.2f} dB, SSIM {pca['val_ssim']:.4f}, "
          f"MSE {pca['val_mse']:.5f}\n"
          f"wrote {args.out}/metrics.json, reconstructions.png, loss.png")
    return history


CONV_CROPS = 100  # crops per photograph with --quick (300 without)
CONV_LOSSES = ("mixed", "mse", "l1", "ssim")  # the losses --model conv takes


class _Images:
    """A trained conv model seen as write_outputs sees a dense one: rows in, rows out."""

    def __init__(self, model, shape, device):
        self.model, self.shape, self.device = model, shape, device

    def reconstruct(self, rows):
        from .models import conv
        return conv.reconstruct(self.model, rows.reshape(-1, 1, *self.shape), self.device).reshape(len(rows), -1)


def run_conv(args):
    """``fastae train --model conv``: the conv autoencoder on crops of the bundled photographs, on one
    process or data-parallel under torchrun; rank 0 evaluates and writes the outputs (and model.pt)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and "NUMBA_NUM_THREADS" not in os.environ:  # the cores shared among the processes
        os.environ["NUMBA_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // world_size))
    from .models import conv
    config = {"model": "conv", "loss": args.loss, "alpha": args.alpha, "epochs": args.epochs,
              "batch_size": args.batch_size, "lr": args.lr, "code": args.code, "crop": args.crop,
              "seed": args.seed, "quick": args.quick, "device": args.device, "peer_loss": args.peer_loss,
              "micro_batches": args.micro_batches}
    world = conv.World(args.device)
    try:
        train_x, val_x, shape = datasets.patches(size=args.crop, per_image=CONV_CROPS if args.quick else
                                                 3 * CONV_CROPS, seed=args.seed)
        images = (-1, 1, *shape)
        view = _Images(None, shape, world.device)
        loss_of = conv.loss_function(args.loss, args.alpha)
        history = []

        def record(model, entry):  # rank 0 only: the validation metrics of the epoch's model
            if world.rank != 0:
                return
            view.model = model
            recon = view.reconstruct(val_x)
            import torch
            with torch.no_grad():
                val_loss = float(loss_of(torch.from_numpy(recon.reshape(images)), torch.from_numpy(val_x.reshape(images))))
            history.append({**entry, "val_loss": val_loss, **images_metrics(recon, val_x, shape)})
        start = time.perf_counter()
        model, train_history, seconds = conv.fit(train_x.reshape(images), config, world, record, args.peer_loss)
        if world.rank != 0:
            return train_history
        samples = config["epochs"] * (len(train_x) // config["batch_size"]) * config["batch_size"]
        warm = [h["seconds_per_step"] for h in train_history[1:]] or [train_history[0]["seconds_per_step"]]
        timing = {"processes": world.size, "step_seconds": seconds, "samples_per_second": samples / seconds,
                  "seconds_per_step": float(np.median(warm))}  # (the first epoch compiles: left out)
        k = config["code"] * (shape[0] // 8) * (shape[1] // 8)
        pca, pca_recon = pca_baseline(train_x, val_x, k, shape)
        write_outputs(args.out, {**config, "code": k}, view, history, val_x, shape, pca, pca_recon, timing)
        import torch
        torch.save(model.state_dict(), os.path.join(args.out, "model.pt"))
        last = history[-1]
        print(f"trained {sum(p.numel() for p in model.parameters())} parameters on {world.size} process"
              f"{'es' if world.size > 1 else ''} in {time.perf_counter() - start:.1f} s "
              f"({timing['samples_per_second']:.0f} samples/s, {1e3 * timing['seconds_per_step']:.1f} ms a step)\n"
              f"validation   model (k={k}): PSNR {last['val_psnr']:.2f} dB, SSIM {last['val_ssim']:.4f}, "
              f"MSE {last['val_mse']:.5f}\n"
              f"             PCA   (k={k}): PSNR {pca['val_psnr']:.2f} dB, SSIM {pca['val_ssim']:.4f}, "
              f"MSE {pca['val_mse']:.5f}\n"
              f"wrote {args.out}/metrics.json, reconstructions.png, loss.png, model.pt")
        return history
    finally:
        world.close()


def non_dominated(points):
    """Indices of the points no other point beats on both coordinates (lower is better)."""
    return [i for i, (a, b) in enumerate(points)
            if not any((c <= a and d <= b) and (c < a or d < b) for j, (c, d) in enumerate(points) if j != i)]


def run_pareto(args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    results = []
    for alpha in args.alphas:
        config = {"data": args.data, "alpha": alpha, "epochs": args.epochs, "batch_size": args.batch_size,
                  "lr": args.lr, "quick": args.quick, "code": args.code}
        _, history, val_x, shape, train_x, _ = train(config, progress=False)
        last = history[-1]
        results.append({"alpha": alpha, "pixel_l1": last["val_l1"], "one_minus_ssim": 1 - last["val_ssim"]})
        print(f"alpha {alpha:.2f}: validation L1 {last['val_l1']:.4f}, 1 - SSIM {1 - last['val_ssim']:.4f}")
    pca, _ = pca_baseline(train_x, val_x, args.code, shape)
    print(f"PCA (k={args.code}): validation L1 {pca['val_l1']:.4f}, 1 - SSIM {1 - pca['val_ssim']:.4f}")
    front = non_dominated([(r["pixel_l1"], r["one_minus_ssim"]) for r in results])
    for i, r in enumerate(results):
        r["non_dominated"] = i in front
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "pareto.json"), "w") as f:
        json.dump({"data": args.data, "epochs": args.epochs, "points": results,
                   "pca": {"code": args.code, "pixel_l1": pca["val_l1"], "one_minus_ssim": 1 - pca["val_ssim"]}},
                  f, indent=2)
    fig, ax = plt.subplots(figsize=(5, 4))
    xs, ys = [r["pixel_l1"] for r in results], [r["one_minus_ssim"] for r in results]
    ax.scatter(xs, ys, c=["C3" if r["non_dominated"] else "C7" for r in results])
    for r, x, y in zip(results, xs, ys):
        ax.annotate(f"{r['alpha']:g}", (x, y), textcoords="offset points", xytext=(4, 4))
    order = sorted(front, key=lambda i: xs[i])
    ax.plot([xs[i] for i in order], [ys[i] for i in order], "C3--", label="non-dominated")
    ax.scatter([pca["val_l1"]], [1 - pca["val_ssim"]], marker="x", color="k", label=f"PCA, k={args.code}")
    ax.set_xlabel("validation L1 (pixel error)")
    ax.set_ylabel("validation 1 - SSIM")
    ax.set_title("mixed loss: alpha * L1 + (1 - alpha) * (1 - SSIM)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "pareto.png"), dpi=100)
    plt.close(fig)
    print(f"wrote {args.out}/pareto.json and pareto.png; non-dominated alphas: "
          f"{[results[i]['alpha'] for i in front]}")
    return results
