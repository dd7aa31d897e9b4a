"""The CUDA emulator: fastae's CUDA path on the host, for machines without a GPU.

``FASTAE_CUDA_EMULATOR=1`` makes ``fastae.cuda.cupy()`` return this module, a
stand-in for the part of CuPy fastae uses: device arrays backed by host memory
(``ndarray``, a NumPy subclass that, like CuPy's, refuses to mix with host
arrays), the allocation and array functions, ``cuda.Device``/``Stream``, and
``RawModule``, whose kernels are the very ``kernels/*.cu`` sources compiled by the
host C++ compiler (see ``kernels.py`` and ``cuda_host.h``). The threads of a block
run as fibers with a real barrier; launches are checked as a device checks them.

Modes (the variable's value):

- ``1`` or ``plain``: optimised kernels; fresh device memory and shared memory
  hold NaN bytes, and a guard after every allocation catches writes past its end;
- ``address``: AddressSanitizer and UBSan: a read or write outside any array or
  outside the launch's shared memory stops the run with a report;
- ``thread``: ThreadSanitizer: the fibers of a block are its threads, so two
  accesses to shared memory between barriers, one a write, are reported as a race.

The sanitizer modes need their runtime loaded before Python starts:
``python -m fastae.cuda.emulator address python -m pytest tests -m gpu``.
``FASTAE_CUDA_EMULATOR_THREADS`` sets how many OS threads run blocks (default:
the cores). The emulator proves the kernels' logic, never their speed, and is
never imported unless the variable is set.
"""
import os
import shutil
import types
from pathlib import Path

import numpy as np

from .kernels import LaunchError, RawModule  # noqa: F401  (CuPy's names)

MODES = {"1": "plain", "plain": "plain", "address": "address", "thread": "thread"}
GUARD = 64          # bytes after each plain-mode allocation that no kernel may write
GUARD_BYTE = 0xA5
ALIGNMENT = 256     # cudaMalloc's


def mode():
    """'plain', 'address' or 'thread', from FASTAE_CUDA_EMULATOR (plain when unset)."""
    value = os.environ.get("FASTAE_CUDA_EMULATOR", "").strip().lower() or "plain"
    if value not in MODES:
        raise ValueError(f"FASTAE_CUDA_EMULATOR must be 1, plain, address or thread, got {value!r}")
    return MODES[value]


def threads():
    value = os.environ.get("FASTAE_CUDA_EMULATOR_THREADS", "")
    try:
        return max(1, int(value)) if value else os.cpu_count() or 1
    except ValueError:
        raise ValueError(f"FASTAE_CUDA_EMULATOR_THREADS must be a positive integer, got {value!r}") from None


# ---------------------------------------------------------------- device memory
class _Allocation(np.ndarray):
    """The bytes of one device allocation (and, in plain mode, its guard)."""


class _Pointer:
    def __init__(self, ptr):
        self.ptr = ptr


class ndarray(np.ndarray):
    """A device array: host memory posing as a CuPy array (``.device``, ``.data.ptr``, ``.get()``)."""

    @property
    def device(self):
        return Device(0)

    @property
    def data(self):
        return _Pointer(self.ctypes.data)

    def get(self, stream=None):
        return asnumpy(self)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _no_host(inputs, ufunc.__name__)
        out = kwargs.get("out")
        if out is not None:
            _no_host(out, ufunc.__name__)
            kwargs["out"] = tuple(_host_view(o) for o in out)
        with np.errstate(all="ignore"):  # a device raises no floating-point warnings
            result = getattr(ufunc, method)(*(_host_view(x) for x in inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _to_device(result)

    def __array_function__(self, func, types, args, kwargs):
        _no_host((args, kwargs), func.__name__)
        with np.errstate(all="ignore"):
            return _to_device(func._implementation(*_host_view(args), **_host_view(kwargs)))


def _no_host(values, what):
    """CuPy refuses host arrays where it computes on the device; so does the emulator."""
    if isinstance(values, (tuple, list)):
        for v in values:
            _no_host(v, what)
    elif isinstance(values, dict):
        _no_host(tuple(values.values()), what)
    elif isinstance(values, np.ndarray) and not isinstance(values, ndarray):
        raise TypeError(f"Unsupported type {type(values)} in {what}: a host array where device arrays are "
                        "expected (the CUDA emulator, as CuPy, copies only through asarray/asnumpy)")


def _host_view(value):
    if isinstance(value, ndarray):
        return value.view(np.ndarray)
    if isinstance(value, (tuple, list)):
        return type(value)(_host_view(v) for v in value)
    if isinstance(value, dict):
        return {k: _host_view(v) for k, v in value.items()}
    return value


def _to_device(value):
    """Results of device computations as device arrays (NumPy's scalars as 0-d arrays, as CuPy gives)."""
    if isinstance(value, ndarray) or isinstance(value, _Allocation):
        return value
    if isinstance(value, np.ndarray):
        return value.view(ndarray)
    if isinstance(value, np.generic):
        return np.asarray(value).view(ndarray)
    if isinstance(value, tuple):
        return tuple(_to_device(v) for v in value)
    if isinstance(value, list):
        return [_to_device(v) for v in value]
    return value


def _allocate(shape, dtype, fill=None):
    """A C-contiguous device array on a 256-byte boundary. Plain mode: NaN bytes unless ``fill`` is given, and a
    guard after the end; the sanitizer modes: exact-sized, so AddressSanitizer's redzone follows it."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if mode() != "plain":
        a = np.empty(shape, dtype).view(ndarray)
    else:
        raw = _Allocation(shape=(nbytes + ALIGNMENT + GUARD,), dtype=np.uint8)
        start = -raw.ctypes.data % ALIGNMENT
        raw[start:start + nbytes] = 0xFF
        raw[start + nbytes:start + nbytes + GUARD] = GUARD_BYTE
        raw.guard = slice(start + nbytes, start + nbytes + GUARD)
        a = ndarray(shape, dtype, buffer=raw, offset=start)
    if fill is not None:
        a.view(np.ndarray)[...] = fill
    return a


def _allocation_of(a):
    base = a
    while base is not None and not isinstance(base, _Allocation):
        base = base.base
    return base


def check_guards(expression, args):
    """After a plain-mode launch: no kernel wrote past the end of an allocation it was given."""
    for i, a in enumerate(args):
        if isinstance(a, ndarray):
            raw = _allocation_of(a)
            if raw is not None and (raw[raw.guard] != GUARD_BYTE).any():
                raw[raw.guard] = GUARD_BYTE
                raise LaunchError(f"{expression} wrote past the end of the allocation behind argument {i} "
                                  f"({raw.guard.start - (-raw.ctypes.data % ALIGNMENT)} bytes)")


def device_pointer(a, dtype, where):
    """The address of a device array given for a kernel's pointer parameter, checked."""
    if not isinstance(a, ndarray):
        raise LaunchError(f"{where} got {type(a).__name__}: kernels take device arrays (or None for a null pointer)")
    if a.dtype != np.dtype(dtype):
        raise LaunchError(f"{where} got an array of {a.dtype}")
    if not a.flags.c_contiguous:
        raise LaunchError(f"{where} got a non-contiguous array of shape {a.shape}, strides {a.strides}")
    return a.ctypes.data


def empty(shape, dtype=float, order="C"):
    return _allocate(shape, dtype)


def zeros(shape, dtype=float, order="C"):
    return _allocate(shape, dtype, 0)


def ones(shape, dtype=float, order="C"):
    return _allocate(shape, dtype, 1)


def full(shape, fill_value, dtype=None, order="C"):
    return _allocate(shape, np.result_type(fill_value) if dtype is None else dtype, fill_value)


def empty_like(a, dtype=None, order="C", shape=None):
    return _allocate(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def zeros_like(a, dtype=None, order="C", shape=None):
    return _allocate(a.shape if shape is None else shape, a.dtype if dtype is None else dtype, 0)


def ones_like(a, dtype=None, order="C", shape=None):
    return _allocate(a.shape if shape is None else shape, a.dtype if dtype is None else dtype, 1)


def full_like(a, fill_value, dtype=None, order="C", shape=None):
    return _allocate(a.shape if shape is None else shape, a.dtype if dtype is None else dtype, fill_value)


def asarray(a, dtype=None, order=None):
    """A device array of ``a``: itself when it already is one of that dtype, else a copy (host to device)."""
    if isinstance(a, ndarray) and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    if isinstance(a, ndarray):
        return a.astype(dtype)
    if hasattr(a, "__cuda_array_interface__") or hasattr(a, "__dlpack_device__") and not isinstance(a, np.ndarray):
        raise TypeError(f"the CUDA emulator holds host memory only: it cannot take a {type(a).__name__}")
    host = np.asarray(a, dtype)
    out = _allocate(host.shape, host.dtype)
    out.view(np.ndarray)[...] = host
    return out


array = asarray


def ascontiguousarray(a, dtype=None):
    a = asarray(a, dtype)
    return a if a.flags.c_contiguous else a.copy(order="C")


def asnumpy(a, stream=None):
    """A host copy (device to host)."""
    return np.array(a.view(np.ndarray) if isinstance(a, ndarray) else a)


def from_dlpack(x):
    raise TypeError("the CUDA emulator cannot take torch CUDA tensors (DLPack device memory); pass its arrays")


def _device_function(name, function):
    def run(*args, **kwargs):
        _no_host((args, kwargs), name)
        with np.errstate(all="ignore"):
            return _to_device(function(*args, **kwargs))
    run.__name__ = name
    return run


class _Namespace(types.SimpleNamespace):
    """``cupy.linalg`` and the like: NumPy's functions on device arrays."""

    def __init__(self, module):
        super().__init__()
        self._module = module

    def __getattr__(self, name):
        return _device_function(name, getattr(self._module, name))


linalg = _Namespace(np.linalg)


def __getattr__(name):
    """The rest of CuPy's array functions: NumPy's, on device arrays only; dtypes and constants as they are."""
    value = getattr(np, name)
    if callable(value) and not isinstance(value, type):
        return _device_function(name, value)
    return value


# ---------------------------------------------------------------- devices and streams
ATTRIBUTES = {"MaxSharedMemoryPerBlockOptin": 227 * 1024, "MaxSharedMemoryPerBlock": 48 * 1024,
              "MaxThreadsPerBlock": 1024, "MaxGridDimX": 2**31 - 1, "MaxGridDimY": 65535,
              "MaxGridDimZ": 65535, "MultiProcessorCount": 132, "WarpSize": 32}


class _Context:
    """A context manager with nothing to wait for: launches run to completion when called."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


class Device(_Context):
    """The one emulated device (an H100's limits); ``Device(i)`` for i != 0 fails as on a one-GPU machine."""

    def __init__(self, device=None):
        if device not in (None, 0):
            raise RuntimeError(f"cudaErrorInvalidDevice: the CUDA emulator has device 0 only, got {device}")
        self.id = 0
        self.attributes = dict(ATTRIBUTES)
        self.compute_capability = "90"

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return self.id


class Stream(_Context):
    """A stream: always synchronised, since launches run to completion when called."""
    null = None

    def __init__(self, null=False, non_blocking=False, ptr=0):
        self.ptr = ptr

    def use(self):
        return self


def _external_stream(ptr, device_id=0):
    return Stream(ptr=ptr)


def _cuda_path():
    """The CUDA toolkit whose headers (cuda_fp16.h, ...) the host build includes."""
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_fp16.h").is_file():
            return root
    nvcc = shutil.which("nvcc")
    return str(Path(nvcc).resolve().parent.parent) if nvcc else None


cuda = types.SimpleNamespace(
    Device=Device, Stream=Stream, ExternalStream=_external_stream, get_current_stream=lambda: Stream(),
    get_cuda_path=_cuda_path, runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
)
