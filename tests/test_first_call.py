"""A first call's compile: how many kernels it compiles, where the cache goes, and what the command says."""
import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import fastae as fa
from fastae.warm import compiling



def test_one_compiled_ssim_kernel_serves_the_family_for_a_window(rng):
    """ssim, ssim_loss and mixed_loss (L1 and MSE), with and without the gradient, valid and same padding:
    one compiled SSIM kernel for a window length and dtype (the pixel loss and the gradient are chosen at
    run time; each had been a compile of 10-20 s of its own), and each pulled kernel's code compiled once
    (its thread wrapper calls it by address)."""
    from fastae.cpu import ssim as cpu_ssim
    x = rng.random((3, 2, 21, 19), dtype=np.float32)
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape, dtype=np.float32), 0, 1)
    before = set(cpu_ssim._tasks.signatures)
    pulled_before = set(cpu_ssim._tasks_pulled.signatures)
    for padding in ("valid", "same"):
        fa.ssim(x, y, win_size=9, padding=padding)
        fa.ssim(x, y, win_size=9, padding=padding, grad=True)
        fa.ssim_loss(x, y, win_size=9, padding=padding, grad=True)
        for pixel in ("l1", "mse"):
            fa.mixed_loss(x, y, alpha=0.3, pixel=pixel, win_size=9, padding=padding)
            fa.mixed_loss(x, y, alpha=0.3, pixel=pixel, win_size=9, padding=padding, grad=True)
    assert len(set(cpu_ssim._tasks.signatures) - before) <= 1
    assert len(set(cpu_ssim._tasks_pulled.signatures) - pulled_before) <= 1
    new = set(cpu_ssim._tasks.signatures) - before
    assert not new or "9" in str(next(iter(new))[3])  # (the window's taps: UniTuple(float32 x 9))


def test_compiling_says_so_once_a_block_takes_longer_than_its_limit():
    stream = io.StringIO()
    with compiling("the kernels of a test", after=0.05, stream=stream):
        time.sleep(0.6)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "compiling the kernels of a test" in lines[0] and "once per install" in lines[0]
    quiet = io.StringIO()
    with compiling("nothing", after=5.0, stream=quiet):
        pass
    time.sleep(0.05)
    assert quiet.getvalue() == ""


def _command(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fastae", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_fastae_compile_reports_bad_flags_one_line_each():
    done = _command("compile", "--jobs", "ssim,bogus", "--processes", "0", "--dtype", "float16")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--dtype" in lines[0]  # (argparse's choices fail first, alone)
    done = _command("compile", "--jobs", "ssim,bogus", "--processes", "0")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 2
    assert "'bogus' is not one of ssim" in lines[0] and "--processes" in lines[1]


def test_fastae_compile_fills_the_cache_that_a_new_process_then_loads(tmp_path):
    """``fastae compile --jobs pointwise`` in an empty cache, then a new process's first mse call loads its
    kernels from the cache (Numba's cache hits, no miss)."""
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    done = _command("compile", "--jobs", "pointwise", "--processes", "1", env=env)
    assert done.returncode == 0, done.stderr
    assert "compiled pointwise (float32) in" in done.stdout and "cached" in done.stdout
    assert any(name.endswith(".nbi") for _, _, names in os.walk(tmp_path) for name in names)
    probe = ("import numpy as np, fastae as fa\n"
             "from fastae.cpu import pointwise\n"
             "x = np.linspace(0, 1, 300, dtype=np.float32)\n"
             "fa.mse(x, x[::-1].copy(), grad=True)\n"
             "stats = pointwise._chunks.stats\n"
             "print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})
    hits, misses = done.stdout.split()[-2:]
    assert done.returncode == 0 and int(hits) >= 1 and int(misses) == 0, done.stdout + done.stderr


def _read_only_copy(tmp_path):
    """fastae's package in a read-only bind mount (root writes anywhere a mode allows), or None where the
    machine does not let this process mount."""
    import shutil
    source, mount = tmp_path / "source", tmp_path / "mount"
    shutil.copytree(os.path.dirname(fa.__file__), source / "fastae",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    mount.mkdir()
    try:
        subprocess.run(["mount", "--bind", str(source), str(mount)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mount)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        subprocess.run(["umount", str(mount)], capture_output=True)
        return None
    return mount


def test_a_read_only_install_caches_in_the_users_cache_directory(tmp_path):
    """Where the package's directory cannot be written, the kernels are cached in the user's cache
    directory (Numba's: ~/.cache/numba) and a new process loads them from there."""
    mount = _read_only_copy(tmp_path)
    if mount is None:
        pytest.skip("no read-only bind mount here (needs root and mount)")
    try:
        home = tmp_path / "home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
        env.update(HOME=str(home), PYTHONPATH=str(mount), XDG_CACHE_HOME=str(home / ".cache"))
        probe = ("import numpy as np, fastae as fa\n"
                 "from fastae.cpu import pointwise\n"
                 "assert fa.__file__.startswith(%r), fa.__file__\n"
                 "x = np.linspace(0, 1, 300, dtype=np.float32)\n"
                 "fa.l1(x, x[::-1].copy(), grad=True)\n"
                 "stats = pointwise._chunks.stats\n"
             "print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))") % str(mount)
        runs = [subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600, env=env,
                               cwd=tmp_path) for _ in range(2)]
        for run in runs:
            assert run.returncode == 0, run.stderr
        assert runs[0].stdout.split()[-2:] == ["0", "1"]  # (compiled: a miss)
        assert runs[1].stdout.split()[-2:] == ["1", "0"]  # (loaded)
        cached = [name for _, _, names in os.walk(home / ".cache") for name in names if name.endswith(".nbi")]
        assert cached and not any(name.endswith(".nbi") for _, _, names in os.walk(mount) for name in names)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_the_bench_measures_a_first_call_in_a_new_process_with_an_empty_cache():
    """fastae bench's cold rows: each call's first run in a new process (NUMBA_CACHE_DIR empty: the probe sees
    it), then its warm time; every public function has a row."""
    from fastae import bench
    probe = ("import os, time; cache = os.environ['NUMBA_CACHE_DIR']; "
             "assert not [f for _, _, files in os.walk(cache) for f in files], cache; first = [True]",
             "time.sleep(0.3) if first and first.pop() else None")
    rows = bench.cold_rows([("a sleep the first time", *probe)])
    assert rows[0]["first call of"] == "a sleep the first time"
    assert rows[0]["cold s"] >= 0.3 and rows[0]["warm ms"] < 300
    named = " ".join(name for name, _, _ in bench.COLD_CALLS)
    public = [name for name in fa.__all__ if callable(getattr(fa, name)) and name[0].islower()]
    assert [name for name in public if name not in named] == []
    assert "cores" in bench.cpu_model()
