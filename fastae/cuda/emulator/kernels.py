"""Kernel builds and launches of the CUDA emulator.

``RawModule(code=..., name_expressions=...)`` compiles the CUDA C++ source with
the host C++ compiler after ``cuda_host.h`` (the built-ins, the block's fibers
and its shared memory), one launcher per template instance, into a shared
library cached by the hash of everything that goes into it. Two forms are
rewritten on the way, because no macro can give them per-block storage: every
``__shared__`` array becomes a reference into the running block's arena
(``shared_array``), every ``extern __shared__`` array a pointer to the
launch's dynamic shared memory (``dynamic_shared``). ``__launch_bounds__`` is
read from the source. A launch is checked as a device checks it (block and grid
extents, the launch bounds, dynamic shared memory against the kernel's limit,
each argument against the kernel's C signature) before the grid runs.
"""
import ctypes
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MAX_THREADS = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)
SHARED_OPTIN = 227 * 1024          # an H100's opt-in limit of shared memory per block
FLAGS = {
    "plain": ["-O2"],
    "address": ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                "-fno-sanitize-recover=all"],
    "thread": ["-O1", "-g", "-fsanitize=thread"],
}
RUNTIMES = {"address": ("__asan_init", "libasan.so"), "thread": ("__tsan_init", "libtsan.so")}


@functools.cache
def contraction():
    """nvcc contracts a * b + c into one fma (rounded once) by default, and a kernel's results depend on where
    it does: the host compiler is asked to do the same, with the host's fma instructions (x86-64 has them
    only with the FMA flag: without it, a product and a sum, as before). g++ contracts in a pass that -O1
    leaves out (the sanitizers' builds): asked for by name."""
    flags = ["-ffp-contract=fast", "-fexpensive-optimizations"]
    if platform.machine() in ("x86_64", "AMD64"):
        try:
            with open("/proc/cpuinfo") as info:
                has_fma = any(line.startswith("flags") and " fma " in f"{line} " for line in info)
        except OSError:
            has_fma = False
        flags += ["-mfma"] if has_fma else []
    return flags


launched = set()  # every kernel instance launched in this process (the tests' coverage check reads it)


class LaunchError(RuntimeError):
    """A launch a device would refuse, or a kernel that failed while it ran."""


class BuildError(RuntimeError):
    """The host compiler could not build a kernel source."""


# ---------------------------------------------------------------- the source
_DYNAMIC = re.compile(r"extern\s+__shared__\s+([^;\[\]]*?)\s*\b(\w+)\s*\[\s*\]\s*;")
_STATIC = re.compile(r"__shared__\s+([^;\[\]=]*?)\s*\b(\w+)\s*((?:\[[^\]]+\]\s*)*);")
_ALIGN = re.compile(r"__align__\s*\(\s*\d+\s*\)")
_BOUNDS = re.compile(r"__global__\s+(?:__launch_bounds__\s*\(\s*(\d+)[^)]*\)\s*)?void\s+"
                     r"(?:__launch_bounds__\s*\(\s*(\d+)[^)]*\)\s*)?(\w+)\s*\(")


def rewrite(code):
    """The source with its shared declarations placed in the block's arena."""
    def dynamic(m):
        ctype = " ".join(_ALIGN.sub("", m.group(1)).split())
        return f"{ctype}* {m.group(2)} = ::fastae_emu::dynamic_shared<{ctype}>();"

    sites = iter(range(1 << 30))

    def static(m):
        ctype = " ".join(_ALIGN.sub("", m.group(1)).split())
        dims = "".join(m.group(3).split())
        return f"auto& {m.group(2)} = ::fastae_emu::shared_array<{ctype}{dims}>({next(sites)});"

    return _STATIC.sub(static, _DYNAMIC.sub(dynamic, code))


def launch_bounds(code):
    """{kernel name: its __launch_bounds__ maximum (1024 when it declares none)}."""
    return {m.group(3): int(m.group(1) or m.group(2) or MAX_THREADS) for m in _BOUNDS.finditer(code)}


def translation_unit(code, expressions):
    lines = ['#include "cuda_host.h"', rewrite(code), ""]
    for i, expression in enumerate(expressions):
        lines += [
            f'extern "C" __attribute__((visibility("default"))) int fastae_emu_launch_{i}(const unsigned* grid, '
            "const unsigned* block, size_t dynamic, size_t dynamic_limit, size_t optin, int threads, void** args, "
            "char* error, size_t error_size) {",
            f"    return ::fastae_emu::launch<&{expression}>(grid, block, dynamic, dynamic_limit, optin, threads, "
            "args, error, error_size);",
            "}",
            f'extern "C" __attribute__((visibility("default"))) void fastae_emu_signature_{i}(char* out) '
            f"{{ ::fastae_emu::signature(&{expression}, out); }}",
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- building
def compiler():
    return os.environ.get("CXX") or shutil.which("g++") or "c++"


@functools.cache
def compiler_version():
    return subprocess.run([compiler(), "--version"], capture_output=True, text=True).stdout


def cache_dir():
    root = os.environ.get("FASTAE_CUDA_EMULATOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fastae", "emulator")
    Path(root).mkdir(parents=True, exist_ok=True)
    return Path(root)


def check_runtime(mode):
    """The sanitizer's runtime must be in the process before an instrumented library is loaded."""
    if mode not in RUNTIMES:
        return
    symbol, library = RUNTIMES[mode]
    if not hasattr(ctypes.CDLL(None), symbol):
        raise RuntimeError(f"FASTAE_CUDA_EMULATOR={mode} needs {library} loaded before Python starts: run "
                           f"`python -m fastae.cuda.emulator {mode} <command>`, which sets LD_PRELOAD")


def build(code, expressions, options, mode):
    """The path of the shared library of ``expressions`` compiled from ``code`` (built once, then cached)."""
    from . import _cuda_path
    includes = [o for o in options if o.startswith("-I") or o.startswith("-D")]
    if _cuda_path():
        includes.append(f"-I{Path(_cuda_path()) / 'include'}")  # cuda_fp16.h, cuda_bf16.h, vector_types.h
    command = [compiler(), "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing",
               "-pthread", "-w", f"-I{HERE}", *includes, *FLAGS[mode], *contraction()]
    unit = translation_unit(code, expressions)
    key = hashlib.sha256("\0".join([unit, (HERE / "cuda_host.h").read_text(), " ".join(command),
                                    compiler_version()]).encode()).hexdigest()[:32]
    target = cache_dir() / f"{key}.so"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=cache_dir()) as work:
        source = Path(work) / "kernels.cpp"
        source.write_text(unit)
        done = subprocess.run([*command, "-x", "c++", str(source), "-o", str(Path(work) / "lib.so")],
                              capture_output=True, text=True)
        if done.returncode:
            what = expressions[0] + (f" and {len(expressions) - 1} more instances" if len(expressions) > 1 else "")
            raise BuildError(f"the host compiler could not build {what}:\n{done.stderr[-6000:]}")
        os.replace(Path(work) / "lib.so", target)  # atomic: a concurrent build of the same key is harmless
    return target


# ---------------------------------------------------------------- launching
POINTEES = {"f": "float32", "d": "float64", "e": "float16", "E": "int16", "i": "int32", "I": "uint32",
            "q": "int64", "Q": "uint64", "h": "int16", "H": "uint16", "b": "int8", "B": "uint8"}
SCALARS = {"f": np.float32, "d": np.float64, "i": np.int32, "I": np.uint32, "q": np.int64, "Q": np.uint64,
           "h": np.int16, "H": np.uint16, "b": np.int8, "B": np.uint8}
C_NAMES = {"f": "float", "d": "double", "e": "__half", "E": "__nv_bfloat16", "i": "int", "I": "unsigned",
           "q": "long long", "Q": "unsigned long long", "h": "short", "H": "unsigned short", "b": "char",
           "B": "unsigned char", "v": "void"}


def parse_signature(text):
    """['*f', 'd', ...] from the packed codes the library reports."""
    params, i = [], 0
    while i < len(text):
        j = i
        while text[j] == "*":
            j += 1
        params.append(text[i:j + 1])
        i = j + 1
    return params


def c_type(param):
    return C_NAMES[param.lstrip("*")] + param[:len(param) - len(param.lstrip("*"))]


def _dims(value, name, limits):
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) for d in dims):
        raise LaunchError(f"{name} must be 1 to 3 integers, got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    for axis, (d, limit) in enumerate(zip(dims, limits)):
        if not 1 <= d <= limit:
            raise LaunchError(f"{name} {dims}: extent {d} along {'xyz'[axis]} outside [1, {limit}]")
    return dims


class Function:
    """One kernel instance: called as CuPy's RawKernel functions are, ``f(grid, block, args, shared_mem=0)``."""

    def __init__(self, library, index, expression, bound, mode, threads):
        self.expression = expression
        self.bound = bound
        self.mode = mode
        self.threads = threads
        self._launch = getattr(library, f"fastae_emu_launch_{index}")
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                                 ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        text = ctypes.create_string_buffer(256)
        getattr(library, f"fastae_emu_signature_{index}")(text)
        self.params = parse_signature(text.value.decode())
        self._library = library  # keep it loaded
        self._max_dynamic = 0

    @property
    def max_dynamic_shared_size_bytes(self):
        return self._max_dynamic

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        if not 0 <= int(value) <= SHARED_OPTIN:
            raise LaunchError(f"{self.expression}: max_dynamic_shared_size_bytes={value} beyond the device's "
                              f"opt-in limit of {SHARED_OPTIN} bytes")
        self._max_dynamic = int(value)

    def _marshal(self, args):
        from . import device_pointer
        if not isinstance(args, tuple):
            raise LaunchError(f"{self.expression}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self.params):
            raise LaunchError(f"{self.expression}: {len(args)} arguments for the {len(self.params)} parameters "
                              f"({', '.join(map(c_type, self.params))})")
        slots = np.zeros(max(1, len(args)), np.uint64)
        raw = slots.view(np.uint8)
        for i, (param, arg) in enumerate(zip(self.params, args)):
            where = f"{self.expression}: argument {i} ({c_type(param)})"
            if param.startswith("*"):
                if arg is None or (isinstance(arg, np.uint64) and arg == 0):
                    continue  # a null pointer
                slots[i] = device_pointer(arg, POINTEES.get(param[1:], "uint8") if len(param) == 2 else "uint64",
                                          where)
            else:
                expected = SCALARS[param]
                if type(arg) is not expected:
                    raise LaunchError(f"{where} got {type(arg).__name__} {arg!r}: pass numpy.{expected.__name__}")
                raw[8 * i:8 * i + arg.itemsize] = np.array([arg]).view(np.uint8)
        addresses = (ctypes.c_void_p * len(slots))(*[slots.ctypes.data + 8 * i for i in range(len(slots))])
        return slots, addresses

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        from . import check_guards
        grid = _dims(grid, "grid", MAX_GRID)
        block = _dims(block, "block", MAX_BLOCK)
        threads = block[0] * block[1] * block[2]
        if threads > min(MAX_THREADS, self.bound):
            raise LaunchError(f"{self.expression}: a block of {threads} threads {block} exceeds "
                              f"{'its __launch_bounds__(' + str(self.bound) + ')' if self.bound < MAX_THREADS else 'the 1024 a block may hold'}")
        if not isinstance(shared_mem, (int, np.integer)) or shared_mem < 0:
            raise LaunchError(f"{self.expression}: shared_mem must be a non-negative integer, got {shared_mem!r}")
        slots, addresses = self._marshal(args)
        error = ctypes.create_string_buffer(512)
        code = self._launch((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), int(shared_mem),
                            self._max_dynamic, SHARED_OPTIN, self.threads, addresses, error, len(error))
        del slots
        if code:
            raise LaunchError(f"{self.expression} on grid {grid}, block {block}: {error.value.decode()}")
        check_guards(self.expression, args)
        launched.add(self.expression)


class RawModule:
    """CuPy's ``RawModule(code=..., options=..., name_expressions=...)`` on the host."""

    def __init__(self, code=None, options=(), name_expressions=(), **unused):
        from . import mode, threads
        self.mode = mode()
        check_runtime(self.mode)
        self.expressions = tuple(name_expressions)
        bounds = launch_bounds(code)
        library = ctypes.CDLL(str(build(code, self.expressions, tuple(options), self.mode)))
        self._functions = {}
        for i, expression in enumerate(self.expressions):
            name = re.sub(r"<.*", "", expression).split("::")[-1]
            self._functions[expression] = Function(library, i, expression, bounds.get(name, MAX_THREADS),
                                                   self.mode, threads())

    def get_function(self, name):
        try:
            return self._functions[name]
        except KeyError:
            raise LaunchError(f"{name} is not one of this module's name_expressions") from None
