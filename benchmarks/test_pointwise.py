"""pytest-benchmark suite for the pointwise losses: fastae f+b into out=,
the streaming ceiling (np.add, plain and over fastae's threads) and PyTorch
eager, side by side in one group per loss. Compare within a group only.

    pytest benchmarks --benchmark-group-by=group --benchmark-columns=median,ops
"""
import numpy as np
import pytest

from fastae.bench import POINTWISE, threaded

torch = pytest.importorskip("torch")
N = 1 << 24


@pytest.fixture(params=POINTWISE, ids=lambda c: c.name)
def case(request):
    return request.param


@pytest.fixture
def data(case):
    pred, target = case.make(N, np.float32)
    return pred, target, np.empty_like(pred)


@pytest.mark.parametrize("who", ["np.add", "np.add threaded", "fastae", "torch eager"])
def test_pointwise(benchmark, case, data, who):
    pred, target, out = data
    benchmark.group = f"{case.name} f+b, 2^24 float32"
    if who == "np.add":
        benchmark(np.add, pred, target, out=out)
    elif who == "np.add threaded":
        benchmark(threaded, np.add, pred, target, out=out)
    elif who == "fastae":
        benchmark(case.fastae, pred, target, out)
    else:
        p = torch.from_numpy(pred).requires_grad_()
        t = torch.from_numpy(target)

        def step():
            p.grad = None
            case.torch_step(p, t)
        benchmark(step)
