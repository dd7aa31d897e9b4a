"""Peak extra memory of one SSIM loss forward+backward, fastae against
pytorch-msssim, on 8x3x256^2 float32: each in a fresh process, the peak
resident size after a warm-up minus the peak before.

    python benchmarks/ssim_memory.py
"""
import subprocess
import sys

CHILD = """
import resource, sys, numpy as np, torch, fastae as fa
from pytorch_msssim import ssim
rng = np.random.default_rng(0)
x = rng.random((8, 3, 256, 256), dtype=np.float32); y = rng.random((8, 3, 256, 256), dtype=np.float32)
out = np.zeros_like(x)
X = torch.from_numpy(x).requires_grad_(); Y = torch.from_numpy(y)
fa.ssim_loss(x[:1, :1, :32, :32].copy(), y[:1, :1, :32, :32].copy(), grad=True)  # compile, warm up
(1 - ssim(X[:1, :1, :32, :32], Y[:1, :1, :32, :32], data_range=1.0)).backward(); X.grad = None
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "fastae":
    fa.ssim_loss(x, y, grad=True, out=out)
else:
    (1 - ssim(X, Y, data_range=1.0)).backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""

if __name__ == "__main__":
    print("peak extra memory, SSIM loss f+b on 8x3x256^2 float32 (inputs 6 MiB each):")
    for who in ("fastae", "pytorch-msssim"):
        mib = float(subprocess.run([sys.executable, "-c", CHILD, who], capture_output=True, text=True,
                                   check=True).stdout.split()[-1])
        print(f"  {who:15s} {mib:8.1f} MiB")
