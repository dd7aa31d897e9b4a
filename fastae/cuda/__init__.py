"""The CUDA backend: CuPy launchers of the kernels in ``kernels/*.cu``, one module
per kernel family, mirroring ``fastae.cpu`` (``fastae.cuda.backend`` gathers the
functions every backend provides: fastae/backends.md). Importing them needs neither CuPy nor a GPU;
CuPy is imported when a kernel is first launched.

With ``FASTAE_CUDA_EMULATOR`` set (``1``, ``address`` or ``thread``), the host
emulator in ``fastae.cuda.emulator`` stands in for CuPy: the same launchers run
the same kernels on the CPU (a development tool; see its docstring).
"""
import os
import sys

EMULATOR = os.environ.get("FASTAE_CUDA_EMULATOR", "").strip().lower() not in ("", "0", "off", "no", "false")


def cupy():
    """CuPy, or the emulator's stand-in for it when FASTAE_CUDA_EMULATOR is set (ImportError without CuPy)."""
    if EMULATOR:
        from . import emulator
        return emulator
    import cupy as module
    return module


def loaded_cupy():
    """What ``cupy()`` returns if it is already imported (the emulator always, when set), else None:
    dispatch never imports CuPy itself."""
    if EMULATOR:
        return cupy()
    return sys.modules.get("cupy")


def kernels_launched():
    """The kernel instances the emulator has launched in this process (empty without it)."""
    if not EMULATOR:
        return set()
    from .emulator.kernels import launched
    return set(launched)

