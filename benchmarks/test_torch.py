"""pytest-benchmark: a training step of a small conv autoencoder (3->8->3,
8x3x128^2, CPU) with the mixed L1 + SSIM loss, fastae.torch beside
pytorch-msssim.

    pytest benchmarks/test_torch.py --benchmark-group-by=group --benchmark-columns=median,ops
"""
import pytest

torch = pytest.importorskip("torch")
peer = pytest.importorskip("pytorch_msssim")
import torch.nn.functional as F  # noqa: E402

import fastae.torch as ft  # noqa: E402


@pytest.mark.parametrize("who", ["fastae", "pytorch-msssim"])
def test_training_step(benchmark, who):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 3, 3, padding=1), torch.nn.Sigmoid())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    batch = torch.rand(8, 3, 128, 128)
    if who == "fastae":
        loss_fn = ft.MixedLoss(alpha=0.16)
    else:
        def loss_fn(r, x):
            return 0.16 * F.l1_loss(r, x) + 0.84 * (1 - peer.ssim(r, x, data_range=1.0))

    def step():
        opt.zero_grad()
        loss_fn(model(batch), batch).backward()
        opt.step()
    benchmark.group = "training step, conv AE 3->8->3, mixed L1+SSIM, 8x3x128^2"
    benchmark(step)
