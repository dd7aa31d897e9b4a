"""The CUDA host emulator: its semantics on small kernels, and proof that it bites.

The emulator runs the gpu-marked suite in CI (``FASTAE_CUDA_EMULATOR=1 python -m
pytest tests -m gpu``); these tests check the emulator itself: kernels compute
what a device computes, launches a device refuses are refused, and three broken
versions of fastae's own kernels (a missing ``__syncthreads``, an SSIM halo one
row off, a grid-stride loop one element past the end) fail the emulated checks
or stop under the sanitizers, while the unbroken kernels pass the same checks.
"""
import json
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fastae.cuda import emulator as emu
from fastae.cuda.emulator.__main__ import environment
from fastae.cuda.emulator.kernels import LaunchError, RawModule, contraction, launch_bounds, rewrite

pytestmark = pytest.mark.skipif(shutil.which("g++") is None or emu._cuda_path() is None,
                                reason="the emulator needs g++ and the CUDA headers (cuda_fp16.h)")

SOURCE = r"""
namespace t {
__global__ void __launch_bounds__(128) scale(const float* x, float* y, double a, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) y[i] = (float)(a * x[i]);
}

__global__ void where(int* out) {  // every thread writes its block and thread index
    const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    out[b * blockDim.x * blockDim.y * blockDim.z + t] = 1000 * b + t;
}

__global__ void reverse(float* x, int sync) {  // 64 threads reverse their block's 64 values through shared memory
    __shared__ float s[64];
    const unsigned i = threadIdx.x;
    s[i] = x[blockIdx.x * 64 + i];
    if (sync) __syncthreads();
    x[blockIdx.x * 64 + i] = s[63 - i];
}

__global__ void total(const float* x, float* out, int n) {  // through dynamic shared memory of n floats
    extern __shared__ __align__(16) float d[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) d[i] = x[i];
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0;
        for (int i = 0; i < n; ++i) s += d[i];
        out[0] = s;
    }
}

__global__ void mad(const float* a, const float* b, const float* c, float* out) {  // contracted, as nvcc does
    out[threadIdx.x] = a[threadIdx.x] * b[threadIdx.x] + c[threadIdx.x];
}

__global__ void divergent(float* x) {
    if (threadIdx.x % 2) return;
    __syncthreads();
    x[threadIdx.x] = 1;
}
}
"""
NAMES = ("t::scale", "t::where", "t::reverse", "t::total", "t::mad", "t::divergent")


@pytest.fixture(scope="module")
def kernels():
    module = RawModule(code=SOURCE, name_expressions=NAMES)
    return {name.split("::")[1]: module.get_function(name) for name in NAMES}


def test_the_source_is_rewritten_only_where_shared_memory_is_declared():
    assert launch_bounds(SOURCE) == {"scale": 128, "where": 1024, "reverse": 1024, "total": 1024, "mad": 1024,
                                     "divergent": 1024}
    text = rewrite(SOURCE)
    assert "auto& s = ::fastae_emu::shared_array<float[64]>(0);" in text
    assert "float* d = ::fastae_emu::dynamic_shared<float>();" in text
    assert "__shared__" not in text and text.count("\n") == SOURCE.count("\n")


def test_a_kernel_computes_and_its_arguments_are_checked(kernels, rng):
    x = emu.asarray(rng.standard_normal(1001).astype(np.float32))
    y = emu.empty(1001, np.float32)
    kernels["scale"]((3,), (128,), (x, y, np.float64(0.5), np.int64(1001)))
    np.testing.assert_array_equal(emu.asnumpy(y), np.float32(0.5 * emu.asnumpy(x).astype(np.float64)))
    for args, message in [
        ((x, y, np.float64(0.5)), "3 arguments for the 4 parameters"),
        ((x, y, 0.5, np.int64(1001)), r"argument 2 \(double\) got float"),
        ((x, y, np.float64(0.5), np.int32(1001)), r"argument 3 \(long long\) got int32"),
        ((x, emu.empty(1001, np.float64), np.float64(0.5), np.int64(1001)), r"argument 1 \(float\*\) got an array of float64"),
        ((x[::2], y, np.float64(0.5), np.int64(501)), "non-contiguous"),
        ((emu.asnumpy(x), y, np.float64(0.5), np.int64(1001)), "got ndarray: kernels take device arrays"),
    ]:
        with pytest.raises(LaunchError, match=message):
            kernels["scale"]((3,), (128,), args)


def test_launches_a_device_refuses_are_refused(kernels):
    x = emu.zeros(64, np.float32)
    args = (x, x, np.float64(1.0), np.int64(64))
    with pytest.raises(LaunchError, match=r"exceeds its __launch_bounds__\(128\)"):
        kernels["scale"]((1,), (256,), args)
    for grid, block, message in [((1,), (0,), "extent 0 along x"), ((1, 65536), (32,), "extent 65536 along y"),
                                 ((1,), (1, 1, 65), "extent 65 along z"), ((2**31,), (32,), "along x")]:
        with pytest.raises(LaunchError, match=message):
            kernels["where"](grid, block, (emu.zeros(1, np.int32),))
    with pytest.raises(LaunchError, match="1024 a block may hold"):
        kernels["where"]((1,), (64, 32), (emu.zeros(2048, np.int32),))


def test_block_and_thread_indices(kernels):
    out = emu.zeros(3 * 2 * 2 * 4 * 3 * 2, np.int32)
    kernels["where"]((3, 2, 2), (4, 3, 2), (out,))
    b, t = np.divmod(np.arange(out.size), 24)
    np.testing.assert_array_equal(emu.asnumpy(out), 1000 * b + t)


def test_the_barrier_is_real(kernels, rng):
    values = rng.standard_normal(3 * 64).astype(np.float32)
    x = emu.asarray(values)
    kernels["reverse"]((3,), (64,), (x, np.int32(1)))
    np.testing.assert_array_equal(emu.asnumpy(x), values.reshape(3, 64)[:, ::-1].ravel())
    x = emu.asarray(values)
    kernels["reverse"]((3,), (64,), (x, np.int32(0)))  # no barrier: threads read what their mates have not written
    assert np.isnan(emu.asnumpy(x)).sum() >= 3 * 32


@pytest.mark.skipif(platform.machine() in ("x86_64", "AMD64") and "-mfma" not in contraction(),
                    reason="this x86-64 host has no fma instructions")
def test_a_product_and_a_sum_are_contracted_into_one_fma_as_nvcc_does(kernels):
    """(1 + 2^-12)^2 - (1 + 2^-11) is 2^-24 rounded once (fma, as on a device), 0 rounded twice: a kernel
    whose result depends on contraction (fastae's SSIM did) gives the device's result here too."""
    a = emu.asarray(np.full(4, 1 + 2.0**-12, np.float32))
    c = emu.asarray(np.full(4, -(1 + 2.0**-11), np.float32))
    out = emu.empty(4, np.float32)
    kernels["mad"]((1,), (4,), (a, a, c, out))
    np.testing.assert_array_equal(emu.asnumpy(out), np.float32(2.0**-24))
    assert np.float32(1 + 2.0**-12) * np.float32(1 + 2.0**-12) + np.float32(-(1 + 2.0**-11)) == 0  # (unfused)


def test_a_barrier_in_divergent_code_is_an_error(kernels):
    with pytest.raises(LaunchError, match="__syncthreads reached by 16 of the 32 threads"):
        kernels["divergent"]((1,), (32,), (emu.zeros(32, np.float32),))


def test_dynamic_shared_memory_is_sized_and_limited_as_on_a_device(kernels, rng):
    values = rng.random(5000).astype(np.float32)
    x, out = emu.asarray(values), emu.zeros(1, np.float32)
    kernels["total"]((1,), (128,), (x, out, np.int32(5000)), shared_mem=5000 * 4)
    assert abs(float(out[0]) - values.astype(np.float64).sum()) < 1e-2
    big = 20000  # 80 000 bytes: more than the 48 KiB a block gets without opting in
    x = emu.asarray(rng.random(big).astype(np.float32))
    with pytest.raises(LaunchError, match="raise max_dynamic_shared_size_bytes"):
        kernels["total"]((1,), (128,), (x, out, np.int32(big)), shared_mem=big * 4)
    kernels["total"].max_dynamic_shared_size_bytes = big * 4
    kernels["total"]((1,), (128,), (x, out, np.int32(big)), shared_mem=big * 4)
    with pytest.raises(LaunchError, match="opt-in limit"):
        kernels["total"].max_dynamic_shared_size_bytes = 300 * 1024


def test_a_write_past_the_end_of_an_allocation_is_caught(kernels):
    x, y = emu.zeros(101, np.float32), emu.zeros(100, np.float32)
    with pytest.raises(LaunchError, match="wrote past the end of the allocation behind argument 1"):
        kernels["scale"]((1,), (128,), (x, y, np.float64(1.0), np.int64(101)))  # y holds 100


def test_device_arrays_keep_away_from_host_arrays():
    a = emu.asarray(np.arange(4.0))
    with pytest.raises(TypeError, match="host array"):
        a + np.ones(4)
    with pytest.raises(TypeError, match="host array"):
        emu.matmul(a, np.ones(4))
    total = a.sum()
    assert isinstance(total, emu.ndarray) and total.shape == () and float(total) == 6.0
    host = emu.asnumpy(a * 2)
    assert type(host) is np.ndarray and host.tolist() == [0, 2, 4, 6]
    assert emu.asarray(a) is a and a.data.ptr % 16 == 0 and a.device.id == 0


# ---------------------------------------------------------------- mutants of fastae's kernels
SSIM_NO_BARRIER = ("ssim.cu", "        ys[k] = (inside ? to_acc(yp[r * (index_t)w + q]) : A(0)) - s;\n    }\n    __syncthreads();",
                   "        ys[k] = (inside ? to_acc(yp[r * (index_t)w + q]) : A(0)) - s;\n    }")
SSIM_HALO_OFF_BY_ONE = ("ssim.cu", "int r = row0 - pad + k / cols, q = col0 - pad + k % cols;",
                        "int r = row0 - pad + 1 + k / cols, q = col0 - pad + k % cols;")
POINTWISE_PAST_THE_END = ("pointwise.cu", "    for (index_t i = first; i < n; i += stride) {\n        A g = element",
                          "    for (index_t i = first; i <= n; i += stride) {\n        A g = element")

CHILD = r"""
import json, sys
import numpy as np
import fastae as fa
import fastae.cuda
from fastae.cuda import _module

check, mutations = sys.argv[1], json.loads(sys.argv[2])
original = _module.source
def source(file):
    text = original(file)
    for where, old, new in mutations:
        if where == file:
            assert old in text, "the mutation no longer matches the kernel source"
            text = text.replace(old, new)
    return text
_module.source = source
_module._launchable = lambda file: ()  # build only the instances this check launches
cp = fastae.cuda.cupy()
rng = np.random.default_rng(7)
if check == "ssim":
    x = rng.random((2, 3, 37, 53)).astype(np.float32)
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    value, grad = fa.ssim_loss(cp.asarray(x), cp.asarray(y), grad=True)
    ref_value, ref_grad = fa.ssim_loss(x, y, grad=True)
    got = np.append(cp.asnumpy(grad).ravel(), float(value))
    want = np.append(ref_grad.ravel(), float(ref_value))
else:
    x = rng.standard_normal(41205).astype(np.float32)
    t = rng.random(41205).astype(np.float32)
    value, grad = fa.mse(cp.asarray(x), cp.asarray(t), grad=True)
    ref_value, ref_grad = fa.mse(x, t, grad=True)
    got = np.append(cp.asnumpy(grad), float(value))
    want = np.append(ref_grad, float(ref_value))
assert np.allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max()), "the emulated kernel disagrees with the CPU"
print("CHECK PASSED")
"""


def _run(mode, check, *mutations):
    done = subprocess.run([sys.executable, "-c", CHILD, check, json.dumps(mutations)], env=environment(mode),
                          capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("check", ["ssim", "mse"])
def test_the_kernels_as_they_are_pass_the_checks_the_mutants_fail(check):
    code, output = _run("plain", check)
    assert code == 0 and "CHECK PASSED" in output, output[-3000:]


def test_a_missing_syncthreads_gives_a_wrong_result_and_a_race():
    code, output = _run("plain", "ssim", SSIM_NO_BARRIER)
    assert code != 0 and "the emulated kernel disagrees with the CPU" in output, output[-3000:]
    code, output = _run("thread", "ssim", SSIM_NO_BARRIER)
    assert code != 0 and "ThreadSanitizer: data race" in output and "ssim_forward" in output, output[-3000:]


def test_an_ssim_halo_one_row_off_gives_a_wrong_result():
    code, output = _run("plain", "ssim", SSIM_HALO_OFF_BY_ONE)
    assert code != 0 and "the emulated kernel disagrees with the CPU" in output, output[-3000:]


def test_a_grid_stride_loop_one_past_the_end_is_caught():
    code, output = _run("plain", "mse", POINTWISE_PAST_THE_END)
    assert code != 0 and "wrote past the end of the allocation" in output, output[-3000:]
    code, output = _run("address", "mse", POINTWISE_PAST_THE_END)
    assert code != 0 and "AddressSanitizer: heap-buffer-overflow" in output and "pointwise_partials" in output, \
        output[-3000:]
