"""Step time of the conv autoencoder (``fastae train --model conv``) with fastae.torch's mixed loss
against the same model with pytorch-msssim + F.l1_loss, on one process and on two (torchrun, gloo),
side by side in one run. Run: ``python benchmarks/conv_steps.py [--epochs 4] [--crop 64]``.

Each configuration trains in a fresh process (each of the two processes on one thread: the machine's
two cores shared out); the step time is the median over the epochs after the first (which compiles).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def run(processes, peer, epochs, crop, out):
    threads = str(max(1, (os.cpu_count() or 1) // processes))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads}
    launch = [sys.executable, "-m", "fastae"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--rdzv-backend", "c10d",
        "--rdzv-endpoint", "127.0.0.1:0", "--module", "fastae"]
    flags = ["train", "--model", "conv", "--quick", "--epochs", str(epochs), "--crop", str(crop), "--out", out]
    subprocess.run([*launch, *flags, *(["--peer-loss"] if peer else [])], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)["timing"]["seconds_per_step"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--crop", type=int, default=64)
    args = parser.parse_args()
    print(f"conv autoencoder, batch 64 of {args.crop}x{args.crop} crops, mixed loss (alpha 0.84, L1 + SSIM), "
          f"float32, ms per training step (forward, loss, backward, Adam)")
    print(f"{'processes':>9}  {'fastae.torch':>12}  {'pytorch-msssim + F.l1_loss':>26}  {'speed-up':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for processes in (1, 2):
            ours = run(processes, False, args.epochs, args.crop, os.path.join(tmp, f"f{processes}"))
            peer = run(processes, True, args.epochs, args.crop, os.path.join(tmp, f"p{processes}"))
            print(f"{processes:>9}  {1e3 * ours:>12.1f}  {1e3 * peer:>26.1f}  {peer / ours:>7.2f}x")


if __name__ == "__main__":
    main()
