"""GPU benchmarks (issue 6's bars): run on a CUDA device with
``python -m pytest benchmarks/test_cuda.py -s``; the table goes to benchmarks/RESULTS.md."""
import pytest

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")
torch = pytest.importorskip("torch")
try:
    _devices = cupy.cuda.runtime.getDeviceCount()
except Exception:  # no driver
    _devices = 0
if not _devices:
    pytest.skip("needs a CUDA device", allow_module_level=True)

from fastae import bench_cuda  # noqa: E402


def test_pointwise_against_copy_and_torch():
    rows = bench_cuda.pointwise_rows()
    print("\n" + bench_cuda.format_rows(rows))


def test_ssim_against_pytorch_msssim():
    rows = bench_cuda.ssim_rows()
    print("\n" + bench_cuda.format_rows(rows))
