"""The main job: train an autoencoder on real images (``fastae train``) and
measure the pixel/structure Pareto front of the mixed loss (``fastae pareto``)."""
import json
import os
import time

import numpy as np

import fastae as fa
from . import datasets
from .models import Autoencoder


def load_data(name, quick):
    if name == "digits":
        return datasets.digits()
    return datasets.patches(size=16, per_image=1000 if quick else 3000)


def evaluate(model, val, shape):
    """Validation loss, PSNR (dB, images in [0, 1]) and SSIM (same padding) of the reconstructions."""
    recon = model.reconstruct(val)
    mse = float(np.mean((recon - val) ** 2, dtype=np.float64))
    images = (-1, 1, *shape)
    ssim = float(fa.ssim(recon.reshape(images).astype(np.float32), val.reshape(images), padding="same"))
    return {"val_loss": model.loss(val), "val_psnr": 10 * np.log10(1.0 / max(mse, 1e-12)), "val_ssim": ssim,
            "val_l1": float(np.mean(np.abs(recon - val), dtype=np.float64))}


def build(config, shape):
    d = int(np.prod(shape))
    return Autoencoder(d, config["code"], hidden=config["hidden"], tied=config["tied"], loss=config["loss"],
                       alpha=config["alpha"], image_shape=shape, sparsity=config["sparsity"],
                       weight_decay=config["weight_decay"], output_activation="sigmoid", seed=config["seed"],
                       bias_init=config["bias_init"])


def train(config, progress=True):
    """Train one model; returns (model, history, validation data, image shape)."""
    train_x, val_x, shape = load_data(config["data"], config["quick"])
    model = build(config, shape)
    history = []

    def record(entry):
        metrics = evaluate(model, val_x, shape)
        entry.update(metrics)
        history.append({"epoch": entry["epoch"], "train_loss": entry["train_loss"],
                        **{k: float(v) for k, v in metrics.items()}})
    model.fit(train_x, epochs=config["epochs"], batch_size=config["batch_size"], lr=config["lr"],
              progress=progress, on_epoch=record)
    return model, history, val_x, shape


def _grid(images, shape, columns):
    rows = -(-len(images) // columns)
    h, w = shape
    canvas = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1))
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = im.reshape(shape)
    return canvas


def write_outputs(out, config, model, history, val_x, shape):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"config": config, "history": history}, f, indent=2)
    n = 12
    pictures = np.concatenate([val_x[:n], model.reconstruct(val_x[:n])])
    grid = np.kron(_grid(pictures, shape, n), np.ones((4, 4)))  # 4x nearest-neighbour, to be seen
    plt.imsave(os.path.join(out, "reconstructions.png"), grid, cmap="gray", vmin=0, vmax=1)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{config['loss']} loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss.png"), dpi=100)
    plt.close(fig)


def run_train(args):
    config = {k: getattr(args, k) for k in ("data", "loss", "alpha", "tied", "epochs", "batch_size", "lr", "quick",
                                            "code", "seed", "weight_decay", "bias_init", "hidden", "sparsity")}
    if config["loss"] == "mixed" and config["alpha"] is None:
        config["alpha"] = 0.16
    start = time.perf_counter()
    model, history, val_x, shape = train(config)
    write_outputs(args.out, config, model, history, val_x, shape)
    first, last = history[0], history[-1]
    print(f"trained {model.n_params} parameters in {time.perf_counter() - start:.1f} s; validation SSIM "
          f"{first['val_ssim']:.4f} after epoch 1 -> {last['val_ssim']:.4f}, PSNR {last['val_psnr']:.2f} dB; "
          f"wrote {args.out}/metrics.json, reconstructions.png, loss.png")
    return history


def non_dominated(points):
    """Indices of the points no other point beats on both coordinates (lower is better)."""
    return [i for i, (a, b) in enumerate(points)
            if not any((c <= a and d <= b) and (c < a or d < b) for j, (c, d) in enumerate(points) if j != i)]


def run_pareto(args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    alphas = args.alphas
    results = []
    for alpha in alphas:
        config = {"data": args.data, "loss": "mixed", "alpha": alpha, "tied": False, "epochs": args.epochs,
                  "batch_size": args.batch_size, "lr": args.lr, "quick": args.quick,
                  "code": args.code, "seed": 0, "weight_decay": 0.0, "hidden": [128], "sparsity": None,
                  "bias_init": 0.01}
        _, history, _, _ = train(config, progress=False)
        last = history[-1]
        results.append({"alpha": alpha, "pixel_l1": last["val_l1"], "one_minus_ssim": 1 - last["val_ssim"]})
        print(f"alpha {alpha:.2f}: validation L1 {last['val_l1']:.4f}, 1 - SSIM {1 - last['val_ssim']:.4f}")
    front = non_dominated([(r["pixel_l1"], r["one_minus_ssim"]) for r in results])
    for i, r in enumerate(results):
        r["non_dominated"] = i in front
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "pareto.json"), "w") as f:
        json.dump({"data": args.data, "epochs": args.epochs, "points": results}, f, indent=2)
    fig, ax = plt.subplots(figsize=(5, 4))
    xs, ys = [r["pixel_l1"] for r in results], [r["one_minus_ssim"] for r in results]
    ax.scatter(xs, ys, c=["C3" if r["non_dominated"] else "C7" for r in results])
    for r, x, y in zip(results, xs, ys):
        ax.annotate(f"{r['alpha']:g}", (x, y), textcoords="offset points", xytext=(4, 4))
    order = sorted(front, key=lambda i: xs[i])
    ax.plot([xs[i] for i in order], [ys[i] for i in order], "C3--", label="non-dominated")
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
