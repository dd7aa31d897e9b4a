"""The CUDA launchers' arguments against the kernels' C signatures, without a GPU.

A stand-in for CuPy (NumPy arrays posing as device arrays) runs every public
function down to the kernel launches, where each launch is checked against the
signature parsed from ``kernels/*.cu``: the argument count, pointer or scalar,
int32 or int64 or double, and each pointer's element type. Nothing is
computed; the GPU tests (tests/cuda/test_kernels.py) check the results on a device or the emulator.
"""
import re
import sys
import types

import numpy as np
import pytest

import fastae as fa
import fastae.cuda
from fastae.cuda import _module
from fastae.cuda.check import instances_by_file
from fastae.cuda import filters as cuda_filters
from fastae.cuda import pointwise as cuda_pointwise
from fastae.cuda import sparse as cuda_sparse
from fastae.cuda import ssim as cuda_ssim

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # the stand-in's buffers hold garbage
              pytest.mark.filterwarnings("ignore::fastae.ConvergenceWarning")]
ELEMENT = {"float": np.float32, "double": np.float64, "__half": np.float16, "__nv_bfloat16": np.int16}


class FakeArray(np.ndarray):
    """A NumPy array that answers CuPy's ``.device.id`` and ``.data.ptr``."""

    @property
    def device(self):
        return types.SimpleNamespace(id=0)

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)


def _fake(value):
    return value.view(FakeArray) if isinstance(value, np.ndarray) else value


class _Device:
    def __init__(self, id=0):
        self.id = id
        self.attributes = {"MaxSharedMemoryPerBlockOptin": 227 * 1024}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def fake_cupy():
    cupy = types.ModuleType("cupy")
    cupy.ndarray = FakeArray
    for name in ("empty", "zeros", "ones", "full", "asarray", "where", "stack", "sum", "log", "eye", "abs",
                 "matmul", "maximum", "prod", "isnan", "isfinite", "broadcast_to", "empty_like", "count_nonzero",
                 "may_share_memory", "nonzero", "ascontiguousarray", "zeros_like", "sign", "repeat", "max", "min"):
        setattr(cupy, name, (lambda f: lambda *a, **k: _fake(f(*a, **k)))(getattr(np, name)))
    cupy.float64 = np.float64
    cupy.linalg = types.SimpleNamespace(eigvalsh=lambda a: _fake(np.linalg.eigvalsh(a)))
    cupy.cuda = types.SimpleNamespace(Device=_Device, ExternalStream=None)
    return cupy


def signatures():
    """{kernel name: [parameter type, ...]} from kernels/*.cu."""
    found = {}
    for path in _module.kernel_dir().glob("*.cu"):
        text = path.read_text()
        for match in re.finditer(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\((.*?)\)\s*\{", text, re.S):
            params = [" ".join(p.split()[:-1]) for p in match.group(2).split(",")]
            found[match.group(1)] = params
    return found


class Checker:
    """Stands in for a compiled kernel: checks each launch against the C signature."""
    launches = []

    def __init__(self, expression, params):
        self.expression = expression
        self.params = params
        template = re.search(r"<([\w:]+)", expression)
        self.ctype = template.group(1) if template else None

    def _pointee(self, param):
        base = param.replace("const", "").replace("*", "").strip()
        if base == "T":
            return ELEMENT[self.ctype]
        if base == "typename Acc<T>::type":
            return np.float64 if self.ctype == "double" else np.float32
        return ELEMENT[base]

    def __call__(self, grid, block, args, shared_mem=0):
        assert len(args) == len(self.params), f"{self.expression}: {len(args)} arguments for {self.params}"
        assert len(grid) <= 3 and len(block) <= 3 and np.prod(block) <= 1024, (grid, block)
        assert all(1 <= g for g in grid) and all(g <= 65535 for g in grid[1:]) and grid[0] < 2**31, \
            f"{self.expression}: grid {grid}"
        for param, arg in zip(self.params, args):
            what = f"{self.expression}: {param} got {type(arg).__name__}"
            if "*" in param:
                if isinstance(arg, np.uint64):
                    assert arg == 0, what  # a null pointer
                    continue
                assert isinstance(arg, FakeArray), what
                assert arg.dtype == self._pointee(param), f"{what} of {arg.dtype}"
                assert arg.flags.c_contiguous, what + " (not contiguous)"
            else:
                expected = {"int": np.int32, "index_t": np.int64, "double": np.float64}[param]
                assert type(arg) is expected, what
        Checker.launches.append(self.expression)


@pytest.fixture
def cupy(monkeypatch):
    fake = fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(fastae.cuda, "EMULATOR", False)  # (under FASTAE_CUDA_EMULATOR the stand-in wins)
    monkeypatch.setattr(_module, "EMULATOR", False)
    known = signatures()
    for launcher in (cuda_pointwise, cuda_ssim, cuda_sparse, cuda_filters):
        monkeypatch.setattr(launcher, "function", lambda file, expression: Checker(
            expression, known[re.sub(r"<.*", "", expression).split("::")[-1]]))
    Checker.launches = []
    cuda_ssim._device_window.cache_clear()  # no fake window may outlive the test (a GPU run may follow)
    yield fake
    cuda_ssim._device_window.cache_clear()


def _arrays(rng, shape, dtype):
    return [rng.random(shape).astype(dtype).view(FakeArray) for _ in range(2)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_every_public_function_launches_kernels_as_they_are_declared(cupy, rng, dtype):
    x, y = _arrays(rng, (2, 3, 40, 37), dtype)
    for activation in fa.ACTIVATIONS:
        fa.activate(x, activation, grad=True)
    for loss in fa.LOSSES:
        for reduction in ("mean", "none"):
            value, grad = getattr(fa, loss)(x, y, activation="sigmoid", reduction=reduction, weight=y, grad=True)
            assert isinstance(value, FakeArray) and grad.shape == x.shape and grad.dtype == dtype
        getattr(fa, loss)(x, y, weight=0.5, grad=True, out=np.empty_like(x))
    for padding in ("valid", "same"):
        fa.ssim(x, y, padding=padding, grad=True)
        fa.ssim_loss(x, y, padding=padding, reduction="none")
        fa.mixed_loss(x, y, alpha=0.3, padding=padding, grad=True)
    fa.ssim(x, y, padding="reflect", grad=True, target_grad=True)  # the general path: filters.cu
    fa.ssim_map(*_arrays(rng, (1, 2, 9, 12, 11), dtype), win_size=5)
    big = _arrays(rng, (1, 2, 48, 50), dtype)
    fa.ms_ssim(*big, weights=[0.5, 0.5], grad=True)
    codes, mask = fa.soft_threshold(x, 0.3, grad=True)
    fa.soft_threshold(x, y[0, 0, 0], grad=True)
    fa.l1_penalty(x, 0.1, grad=True)
    fa.l2_penalty(x, 0.1, accumulate_into=np.empty_like(x))
    h = rng.uniform(0.1, 0.9, (30, 8)).astype(dtype).view(FakeArray)
    fa.kl_sparsity(h, 0.1, grad=True)
    if dtype != np.float16:
        d = np.linalg.qr(rng.standard_normal((16, 8)))[0].astype(dtype).view(FakeArray)
        signals = rng.standard_normal((20, 16)).astype(dtype).view(FakeArray)
        fa.lasso_codes(signals, d, 0.1)
        general = rng.standard_normal((16, 8)).astype(dtype).view(FakeArray)  # (not orthonormal: FISTA runs)
        fa.ista(signals, general, 0.1, n_iter=9)
    ran = {re.sub(r"<.*", "", e) for e in Checker.launches}
    expected = {f"fastae::{name}" for name in signatures()} - ({"fastae::fista_step"} if dtype == np.float16 else set())
    assert ran == expected, "a kernel was never launched"
    compiled = {expression for expressions in instances_by_file().values() for expression in expressions}
    assert set(Checker.launches) <= compiled, "a launch names an instance the nvcc check does not compile"


def test_bfloat16_launches_take_int16_bits(cupy, rng):
    """bfloat16 travels as int16 bit patterns (torch tensors viewed through DLPack)."""
    x, y = (rng.integers(-2**15, 2**15, (2, 3, 40, 37)).astype(np.int16).view(FakeArray) for _ in range(2))
    g = np.empty_like(x)
    value, total, outside = cuda_pointwise.pointwise("bce", {}, "sigmoid", 0.0, x, y, None, g, None, 1.0, 1.0)
    assert value.dtype == np.int16 and total.dtype == np.float64 and outside.dtype == np.float64
    planes = x.reshape(-1, 40, 37)
    window = np.ones(11) / 11
    sums = cuda_ssim.ssim_planes(planes, y.reshape(-1, 40, 37), window, 0, 1e-4, 9e-4, False,
                                 cupy.full(6, 1.0), g.reshape(-1, 40, 37), True)
    assert sums.shape == (6,)
    cuda_sparse.soft_threshold(x, 0.5, g, None)
    assert len(Checker.launches) == 7  # pointwise 2, SSIM 4 (shifts, forward, backward, sums), soft_threshold 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_inputs_launch_valid_grids(cupy, dtype):
    """Zero signals, elements or planes: every launch still has a grid of at least one block."""
    empty = np.zeros((0, 5), dtype).view(FakeArray)
    fa.mse(empty, empty, reduction="sum", grad=True)
    fa.soft_threshold(empty, 0.1, grad=True)
    d = np.eye(5, 3, dtype=dtype).view(FakeArray)
    assert fa.ista(empty, d, 0.1).shape == (0, 3)
    assert fa.lasso_codes(empty, d, 0.1).shape == (0, 3)
    planes = np.zeros((0, 3, 16, 16), dtype).view(FakeArray)
    fa.ssim(planes, planes, grad=True)
