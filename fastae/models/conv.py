"""A small convolutional autoencoder in PyTorch, trained with fastae.torch's losses, on one process
or data-parallel under ``torchrun`` (DistributedDataParallel: gloo on CPUs, NCCL on GPUs).

The shape of pytorch-msssim's own autoencoder example, without its GDN layers: three stride-2
convolutions down to a code map of ``code`` channels at 1/8 of the side, three transposed
convolutions back up, leaky ReLUs between, a sigmoid out (images in [0, 1]).

Data-parallel runs take ``batch_size`` as the global batch: each of the W processes takes
batch_size / W images of it (``DistributedSampler`` over one permutation per epoch, seeded
alike in every process), DDP averages the gradients, and so W processes follow the same
trajectory as one process on the whole batches, to float32 rounding. One process with
``micro_batches`` = W (gradient accumulation over images m, m + W, ... of each batch, each
micro-batch's loss divided by W) does exactly what W processes do: DDP divides each gradient by W
and sums, so the parameters are bit-identical where the kernels run alike (one thread each).
Rank 0 alone evaluates and writes files; the loss history is the all-reduced one.
"""
import contextlib
import os
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import fastae.torch as ft


class ConvAutoencoder(nn.Module):
    def __init__(self, channels=1, code=16, width=32):
        super().__init__()
        act = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1), act(),
            nn.Conv2d(width, 2 * width, 4, 2, 1), act(),
            nn.Conv2d(2 * width, code, 4, 2, 1))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(code, 2 * width, 4, 2, 1), act(),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), act(),
            nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Sigmoid())

    def forward(self, x):
        return self.decoder(self.encoder(x))


def loss_function(loss, alpha, peer=False):
    """The reconstruction loss f(y, x): fastae.torch's, or (``peer``) the same loss by
    pytorch-msssim and torch.nn.functional, for comparison."""
    if not peer:
        return {"mixed": lambda y, x: ft.mixed_loss(y, x, alpha=alpha), "mse": ft.mse_loss, "l1": ft.l1_loss,
                "ssim": ft.ssim_loss}[loss]
    import pytorch_msssim
    ssim = lambda y, x: pytorch_msssim.ssim(y, x, data_range=1.0)  # noqa: E731
    return {"mixed": lambda y, x: alpha * F.l1_loss(y, x) + (1 - alpha) * (1 - ssim(y, x)), "mse": F.mse_loss,
            "l1": F.l1_loss, "ssim": lambda y, x: 1 - ssim(y, x)}[loss]


class World:
    """This process's place in a torchrun job (one process, rank 0 of 1, without torchrun)."""

    def __init__(self, device):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(f"cuda:{local}" if device == "cuda" else "cpu")
        if self.size > 1 and not dist.is_initialized():
            if device == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if device == "cuda" else "gloo")

    def mean(self, value):
        """The mean of a float over the processes (itself on one)."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.size

    def close(self):
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def fit(train_x, config, world, on_epoch=None, peer=False):
    """Train a ConvAutoencoder on images (N, C, S, S) in [0, 1]; returns (model, history of the all-reduced
    mean training loss per epoch, seconds in the training steps)."""
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    micro = config.get("micro_batches", 1)
    if config["batch_size"] % (world.size * micro):
        raise ValueError(f"--batch-size {config['batch_size']} is the global batch: it must divide among "
                         f"{world.size} processes and {micro} micro-batches")
    torch.manual_seed(config["seed"])  # the same initial weights in every process
    model = ConvAutoencoder(train_x.shape[1], config["code"]).to(world.device)
    net = DistributedDataParallel(model) if world.size > 1 else model
    data = TensorDataset(torch.from_numpy(train_x))
    sampler = DistributedSampler(data, num_replicas=world.size, rank=world.rank, shuffle=True, seed=config["seed"],
                                 drop_last=True)
    loader = DataLoader(data, batch_size=config["batch_size"] // world.size, sampler=sampler, drop_last=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    steps = config["epochs"] * len(loader)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    loss_of = loss_function(config["loss"], config["alpha"], peer)
    history, seconds = [], 0.0
    for epoch in range(config["epochs"]):
        sampler.set_epoch(epoch)
        total, batches = 0.0, 0
        start = time.perf_counter()
        for (x,) in loader:
            x = x.to(world.device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = 0.0
            for m in range(micro):  # micro-batch m: images m, m + micro, ... (DDP's split, within a process)
                last = m == micro - 1
                with contextlib.nullcontext() if last or world.size == 1 else net.no_sync():
                    xm = x[m::micro].contiguous() if micro > 1 else x  # (laid out as a process's own batch)
                    part = loss_of(net(xm), xm) / micro  # (exact: micro is a power of 2)
                    part.backward()
                loss += float(part.detach())
            optimizer.step()
            schedule.step()
            total += loss
            batches += 1
        elapsed = time.perf_counter() - start
        seconds += elapsed
        history.append({"epoch": epoch + 1, "train_loss": world.mean(total / max(batches, 1)),
                        "seconds_per_step": world.mean(elapsed / max(batches, 1))})
        if on_epoch is not None:
            on_epoch(model, history[-1])
    return model, history, seconds


def reconstruct(model, x, device, batch=256):
    """The model's reconstructions of images x (N, C, S, S), as a float32 NumPy array."""
    model.eval()
    with torch.no_grad():
        out = [model(torch.from_numpy(x[i:i + batch]).to(device)).cpu().numpy() for i in range(0, len(x), batch)]
    model.train()
    return np.concatenate(out) if out else np.empty_like(x)
