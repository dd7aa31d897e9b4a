"""Run a command with fastae's CUDA path on the host emulator.

    python -m fastae.cuda.emulator MODE COMMAND [ARG ...]

MODE is plain, address (AddressSanitizer and UBSan) or thread
(ThreadSanitizer). The sanitizer modes load the sanitizer's runtime before
Python starts (LD_PRELOAD), which an instrumented kernel library needs; the
first report stops the run with a non-zero exit status.
"""
import os
import subprocess
import sys

from .kernels import RUNTIMES, compiler

OPTIONS = {
    "address": {"ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:allocator_may_return_null=1",
                "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"},
    "thread": {"TSAN_OPTIONS": "halt_on_error=1:exitcode=66:ignore_noninstrumented_modules=1:report_signal_unsafe=0"},
}


def environment(mode, base=None):
    """The environment variables that run a command under the emulator in ``mode``."""
    env = dict(os.environ if base is None else base)
    env["FASTAE_CUDA_EMULATOR"] = mode
    if mode in RUNTIMES:
        library = subprocess.run([compiler(), f"-print-file-name={RUNTIMES[mode][1]}"], capture_output=True,
                                 text=True).stdout.strip()
        if not os.path.isabs(library):
            raise SystemExit(f"the compiler ({compiler()}) has no {RUNTIMES[mode][1]}: install its sanitizer runtime")
        env["LD_PRELOAD"] = " ".join(filter(None, [library, env.get("LD_PRELOAD")]))
        for name, value in OPTIONS[mode].items():
            env[name] = ":".join(filter(None, [value, env.get(name)]))
    return env


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] not in ("plain", "address", "thread"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    env = environment(argv[0])
    os.execvpe(argv[1], argv[1:], env)


if __name__ == "__main__":
    sys.exit(main())
