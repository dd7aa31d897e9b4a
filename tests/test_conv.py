"""fastae train --model conv: outputs, bad flags, and data-parallel training under torchrun (two CPU
processes over gloo on 127.0.0.1) against one process on the same batches."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")

RUN = ["--model", "conv", "--quick", "--epochs", "1", "--crop", "32"]


def train(out, *flags, processes=1):
    """``fastae train`` in a fresh process (under torchrun for processes > 1), one thread per process:
    the kernels then run alike in every process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "PYTHONFAULTHANDLER": "1"}  # (a process that dies of a signal prints every thread's stack)
    launch = [sys.executable, "-m", "fastae"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--rdzv-backend",
        "c10d", "--rdzv-endpoint", "127.0.0.1:0", "--module", "fastae"]
    command = [*launch, "train", *RUN, *flags, "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    return torch.load(out / "model.pt"), metrics, result.stdout


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    return train(tmp_path_factory.mktemp("ddp"), processes=2)


def test_two_processes_do_exactly_what_one_does_with_two_micro_batches(two_processes, tmp_path):
    state, metrics, stdout = two_processes
    assert "on 2 processes" in stdout and metrics["timing"]["processes"] == 2
    one, one_metrics, _ = train(tmp_path, "--micro-batches", "2")
    assert state.keys() == one.keys()
    for name in state:  # DDP divides each gradient by 2 and sums: what the accumulation does, bit for bit
        assert torch.equal(state[name], one[name]), name
    # (the logged losses: a float64 mean over processes against a sum of halves, to float32 rounding)
    np.testing.assert_allclose([h["train_loss"] for h in metrics["history"]],
                               [h["train_loss"] for h in one_metrics["history"]], rtol=1e-7)


def test_two_processes_agree_with_one_process_on_the_whole_batches(two_processes, tmp_path):
    state, metrics, _ = two_processes
    one, one_metrics, _ = train(tmp_path)
    initial = _initial_state()
    moved = 0.0
    for name in state:
        scale = one[name].abs().max()
        # 14 Adam steps: the sums over the batch run in another order (float32 rounding, ~1e-7), which
        # Adam's normalised steps amplify where a gradient is near 0; far below the distance travelled
        assert (state[name] - one[name]).abs().max() <= 1e-3 * scale, name
        moved = max(moved, float((one[name] - initial[name]).abs().max() / scale))
    assert moved > 1e-2  # the parameters did move: the comparison is not between two initial states
    np.testing.assert_allclose(metrics["history"][-1]["train_loss"], one_metrics["history"][-1]["train_loss"],
                               rtol=1e-4)


def _model():
    from fastae.models.conv import ConvAutoencoder
    return ConvAutoencoder(1, 8)


def _initial_state():
    torch.manual_seed(0)
    return _model().state_dict()


def test_outputs_and_metrics(two_processes, tmp_path):
    state, metrics, stdout = two_processes
    assert metrics["config"]["model"] == "conv" and metrics["config"]["code"] == 8 * 4 * 4
    final = metrics["final"]
    for key in ("val_psnr", "val_ssim", "val_loss", "train_loss"):
        assert np.isfinite(final[key]), key
    assert 0 < final["val_ssim"] < 1 and final["val_psnr"] > 5
    assert metrics["pca"]["code"] == 128 and "PCA" in stdout


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_a_torchrun_worker_ends_at_once_with_its_output_flushed(world_size):
    """The command in a torchrun worker (WORLD_SIZE > 1) leaves without finalizing the interpreter (where
    gloo's threads can abort it): nothing registered to run at exit runs, and what it printed to
    block-buffered pipes still arrives. Elsewhere it returns as usual."""
    code = ("import atexit, sys; import fastae.cli as cli; atexit.register(lambda: print(' finalized', end=''));"
            "cli.main = lambda: print('trained', end='') or sys.stderr.write('warned') and 0; sys.exit(cli.command())")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # (block-buffered pipes)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**env, "WORLD_SIZE": world_size})
    stdout = "trained" if world_size == "2" else "trained finalized"
    assert (result.returncode, result.stdout, result.stderr) == (0, stdout, "warned")


def test_bad_flags_one_line_each():
    result = subprocess.run([sys.executable, "-m", "fastae", "train", "--model", "conv", "--tied", "--loss", "bce",
                             "--crop", "36", "--micro-batches", "3"], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("fastae train: error: argument") for line in lines), lines
    assert "Traceback" not in result.stderr
    for flag in ("--tied", "--loss", "--crop", "--micro-batches"):
        assert any(flag in line for line in lines), flag
