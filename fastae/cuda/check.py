"""Compile every CUDA kernel fastae can launch with nvcc, without a GPU.

``python -m fastae.cuda.check`` writes, per ``kernels/*.cu``, a translation
unit that takes the address of every template instance the launchers name
(forcing nvcc to instantiate and compile each one) and compiles it for each
architecture, warnings as errors. Exit status 1 on any failure. CI runs it.
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import filters, pointwise, sparse, ssim
from ._module import kernel_dir

ARCHS = ("80", "90")


def instances_by_file():
    by_file = {}
    for module in (pointwise, ssim, sparse, filters):
        for file, expression in module.instances():
            by_file.setdefault(file, []).append(expression)
    return by_file


def translation_unit(file, expressions):
    lines = [f'#include "{file}"', "static void* const fastae_instances[] = {"]
    lines += [f"    (void*)&{expression}," for expression in expressions]
    lines += ["};", "void* fastae_instance(int i) { return fastae_instances[i]; }", ""]
    return "\n".join(lines)


def compile_file(nvcc, file, expressions, workdir, archs):
    unit = Path(workdir) / f"check_{file}"
    unit.write_text(translation_unit(file, expressions))
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    command = [nvcc, "-std=c++17", f"-I{kernel_dir()}", "-Werror", "all-warnings", *gencode, "-c", str(unit),
               "-o", str(unit.with_suffix(".o"))]
    done = subprocess.run(command, capture_output=True, text=True)
    return file, len(expressions), done.returncode, done.stdout + done.stderr


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nvcc", default=shutil.which("nvcc") or "nvcc")
    parser.add_argument("--arch", action="append", help="compute capability digits (default: 80 and 90)")
    args = parser.parse_args(argv)
    archs = args.arch or ARCHS
    sources = sorted(p.name for p in kernel_dir().glob("*.cu"))
    by_file = instances_by_file()
    missing = [f for f in sources if f not in by_file]
    failed = bool(missing)
    for f in missing:
        print(f"FAIL {f}: no launcher names an instance of it")
    with tempfile.TemporaryDirectory() as workdir, ThreadPoolExecutor() as pool:
        jobs = [pool.submit(compile_file, args.nvcc, f, by_file[f], workdir, archs) for f in sources if f in by_file]
        for job in jobs:
            file, count, code, log = job.result()
            print(f"{'ok  ' if code == 0 else 'FAIL'} {file}: {count} kernels for sm_{', sm_'.join(archs)}")
            if code != 0:
                failed = True
                print(log)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
