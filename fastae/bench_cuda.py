"""The GPU benchmark behind ``fastae bench --cuda`` (and ``benchmarks/test_cuda.py``).

Ratios taken in one run on one device, timed with CUDA events (median of
several timed batches after a warm-up):

- pointwise forward+backward on 2^28 float32 (2 reads + 1 write per element)
  as a fraction of the device-to-device copy bandwidth (1 read + 1 write,
  measured in the same run), and as a speed-up over torch eager and over
  ``torch.compile`` doing the same forward+backward;
- SSIM loss forward+backward on 32x3x512x512 against pytorch-msssim, in
  Gpixel/s, for float32, float16 and bfloat16.
"""
import statistics

import numpy as np

import fastae as fa
from fastae._table import torch_peer


def cuda_time(step, repeats=7, inner=5):
    """Median seconds of one ``step()`` over ``repeats`` batches of ``inner`` calls, after a warm-up."""
    import torch
    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            step()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3 / inner)
    return statistics.median(times)


POINTWISE = [("MSE", "mse", "identity"), ("L1", "l1", "identity"), ("BCE with logits", "bce", "sigmoid"),
             ("sigmoid + MSE", "mse", "sigmoid")]




def pointwise_rows(n=1 << 28, repeats=7):
    import torch
    pred = torch.randn(n, device="cuda")
    target = torch.rand(n, device="cuda")
    out = torch.empty_like(pred)
    copy = cuda_time(lambda: out.copy_(pred), repeats)
    copy_bandwidth = 2 * 4 * n / copy
    rows = [{"kernel": "device copy", "GB/s": copy_bandwidth / 1e9}]
    for name, loss, activation in POINTWISE:
        fast = cuda_time(lambda: getattr(fa, loss)(pred, target, activation=activation, grad=True, out=out), repeats)
        forward = torch_peer(loss, activation)
        leaf = pred.clone().requires_grad_()

        def eager():
            leaf.grad = None
            forward(leaf, target).backward()
        compiled_forward = torch.compile(forward)

        def compiled():
            leaf.grad = None
            compiled_forward(leaf, target).backward()
        bandwidth = 3 * 4 * n / fast
        rows.append({"kernel": name, "GB/s": bandwidth / 1e9, "of copy": bandwidth / copy_bandwidth,
                     "x torch eager": cuda_time(eager, repeats) / fast,
                     "x torch.compile": cuda_time(compiled, repeats) / fast})
    return rows


def ssim_rows(shape=(32, 3, 512, 512), repeats=5):
    import torch
    from pytorch_msssim import ssim as peer_ssim
    rows = []
    pixels = int(np.prod(shape))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.rand(shape, device="cuda").to(dtype)
        y = (x.float() + 0.1 * torch.randn(shape, device="cuda")).clamp(0, 1).to(dtype)
        out = torch.empty_like(x)
        fast = cuda_time(lambda: fa.ssim_loss(x, y, grad=True, out=out), repeats, inner=3)
        leaf = x.clone().requires_grad_()

        def peer():
            leaf.grad = None
            (1 - peer_ssim(leaf, y, data_range=1.0)).backward()
        slow = cuda_time(peer, repeats, inner=3)
        rows.append({"kernel": f"ssim_loss f+b {str(dtype).removeprefix('torch.')}", "Gpixel/s": pixels / fast / 1e9,
                     "peer Gpixel/s": pixels / slow / 1e9, "x pytorch-msssim": slow / fast})
    return rows


def format_rows(rows):
    """A markdown table of the rows (numbers to 3 significant digits)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[k]:.3g}" if isinstance(row.get(k), float) else str(row.get(k, ""))
                                       for k in keys) + " |")
    return "\n".join(lines)


def main(repeats=7):
    import torch
    print(f"fastae {fa.__version__} bench --cuda on {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("pointwise forward+backward, 2^28 float32 ('of copy': bandwidth / device copy bandwidth)")
    print(format_rows(pointwise_rows(repeats=repeats)))
    print("\nSSIM loss forward+backward, 32x3x512x512, 11x11 Gaussian window, valid; peer = pytorch-msssim")
    print(format_rows(ssim_rows(repeats=max(3, repeats // 2))))
