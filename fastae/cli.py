"""The fastae command: train an autoencoder on real images, trace the
pixel/structure Pareto front of the mixed loss, benchmark the kernels."""
import argparse
import math
import os
import sys
import time

from ._table import ACTIVATIONS
from .models.autoencoder import LOSSES, SCHEDULES
from .train import CONV_LOSSES, DEFAULTS
from .warm import JOBS


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags one line each (``prog: error: argument --flag: ...``) and exits 2:
    no usage dump, no traceback. The flags' types mark a bad value rather than raise, so that every bad
    flag is reported, not only the first."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def check(self, args):
        lines = []
        for action in self._actions:
            values = getattr(args, action.dest, None)
            for value in values if isinstance(values, list) else [values]:
                if isinstance(value, _Bad):
                    lines.append(f"{self.prog}: error: argument {'/'.join(action.option_strings)}: {value}")
        if lines:
            self.exit(2, "\n".join(lines) + "\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default in its help, unless it has none (None, or off for a switch)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class _Bad(str):
    """A flag's value that did not parse: the reason."""


def _checked(parse):
    """An argparse type from ``parse``, which raises ArgumentTypeError: a _Bad value instead of an exit."""
    def run(text):
        try:
            return parse(text)
        except argparse.ArgumentTypeError as e:
            return _Bad(str(e))
    return run


def _number(kind, low=None, high=None, low_open=False, what=None):
    """An argparse type: a finite ``kind`` within [low, high] (``low_open``: above low)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what or kind.__name__}, got {text!r}") from None
        if (isinstance(value, float) and not math.isfinite(value)) or (low is not None and (
                value <= low if low_open else value < low)) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what or kind.__name__}, got {text!r}")
        return value
    return parse


POSITIVE_INT = _number(int, 1, what="a positive integer")
POSITIVE = _number(float, 0.0, low_open=True, what="a positive number")
NON_NEGATIVE = _number(float, 0.0, what="a non-negative number")
FRACTION = _number(float, 0.0, 1.0, what="a number in [0, 1]")
FINITE = _number(float, what="a finite number")
SEED = _number(int, 0, what="a non-negative integer")


@_checked
def _size(text):
    """An element count: 4096 or 2^24."""
    try:
        value = 1 << int(text[2:]) if text.startswith("2^") else int(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected an element count such as 4096 or 2^24, got {text!r}") from None
    if not 1 <= value <= 1 << 40:
        raise argparse.ArgumentTypeError(f"expected an element count between 1 and 2^40, got {text!r}")
    return value


def _list(item, name):
    """An argparse type: a comma-separated list of ``item``s ('' for none)."""
    def parse(text):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            return [item(p) for p in parts]
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{name}: {e}") from None
    return _checked(parse)


def _choice(options):
    """An item of _list: one of ``options``."""
    def parse(text):
        if text not in options:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(options)}")
        return text
    return parse


@_checked
def _sparsity(text):
    """'l1:ALPHA' or 'kl:RHO' or 'kl:RHO:BETA'."""
    kind, *values = text.split(":")
    wanted = "l1:ALPHA (ALPHA >= 0), kl:RHO or kl:RHO:BETA (0 < RHO < 1, BETA >= 0)"
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    ok = all(math.isfinite(v) for v in numbers) and (
        (kind == "l1" and len(numbers) == 1 and numbers[0] >= 0)
        or (kind == "kl" and len(numbers) in (1, 2) and 0 < numbers[0] < 1 and (len(numbers) == 1 or numbers[1] >= 0)))
    if not ok:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return (kind, *numbers)


@_checked
def _out_dir(text):
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    return text


def _data_options(p, epochs_help):
    p.add_argument("--data", choices=["patches", "digits"], default="patches",
                   help="16x16 patches of scikit-image's photographs, or scikit-learn's 8x8 digits")
    p.add_argument("--epochs", type=_checked(POSITIVE_INT), help=epochs_help)
    p.add_argument("--batch-size", type=_checked(POSITIVE_INT), default=DEFAULTS["batch_size"], help="samples per step")
    p.add_argument("--lr", type=_checked(POSITIVE), default=DEFAULTS["lr"], help="Adam's (peak) learning rate")
    p.add_argument("--code", type=_checked(POSITIVE_INT),
                   help=f"code size k (default: {DEFAULTS['code']}; PCA with the same k is the baseline); with "
                        "--model conv, the code map's channels (default: 8, so k = 8 (crop / 8)^2)")
    p.add_argument("--out", type=_out_dir, default="fastae-out", help="directory for the outputs")
    p.add_argument("--quick", action="store_true", help="fewer patches and epochs (seconds)")


def parser():
    formatter = _Formatter
    top = _Parser(prog="fastae", description=__doc__, formatter_class=formatter)
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    bench = sub.add_parser("bench", formatter_class=formatter,
                           help="benchmark the kernels against the streaming ceiling and PyTorch",
                           description="The roofline report: each kernel against np.add of the same size (one "
                                       "thread and fastae's threads), PyTorch eager, pytorch-msssim, scikit-learn.")
    bench.add_argument("--quick", action="store_true", help="one size, float32, few repeats (under a minute)")
    bench.add_argument("--size", type=_size, action="append", help="element count, e.g. 2^24 (repeatable)")
    bench.add_argument("--dtype", choices=["float32", "float64"], action="append", help="repeatable")
    bench.add_argument("--threads", type=_checked(POSITIVE_INT), help="threads for fastae and torch (default: all cores)")
    bench.add_argument("--repeats", type=_checked(POSITIVE_INT), help="timed calls per measurement")
    bench.add_argument("--cuda", action="store_true", help="the GPU benchmark (needs CuPy, torch on CUDA and a device)")
    compile_ = sub.add_parser("compile", formatter_class=formatter,
                              help="compile the kernels ahead of their first call (once per install)",
                              description="Compile fastae's CPU kernels into Numba's cache, each group in a "
                                          "process of its own, so that no first call waits for them.")
    compile_.add_argument("--jobs", type=_list(_choice(JOBS), "jobs"), default=",".join(JOBS),
                          help=f"comma-separated groups among {', '.join(JOBS)}")
    compile_.add_argument("--dtype", choices=["float32", "float64"], action="append",
                          help="repeatable (default: float32)")
    compile_.add_argument("--processes", type=_checked(POSITIVE_INT), help="at a time (default: the cores)")
    train = sub.add_parser("train", formatter_class=formatter, help="train an autoencoder on real images",
                           description="Train a dense autoencoder on real images; writes metrics.json, "
                                       "reconstructions.png and loss.png.")
    _data_options(train, "passes over the data (default: 30, or 10 with --quick)")
    train.add_argument("--model", choices=["dense", "conv"], default="dense",
                       help="dense: NumPy on fastae's kernels; conv: a convolutional autoencoder in PyTorch on "
                            "fastae.torch's losses (needs torch; data-parallel under torchrun)")
    train.add_argument("--crop", type=_checked(_number(int, 16, 128, what="a multiple of 8 in [16, 128]")),
                       default=64, help="side of the photographs' crops (--model conv)")
    train.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where --model conv trains")
    train.add_argument("--peer-loss", action="store_true",
                       help="--model conv: the same loss by pytorch-msssim and torch.nn.functional (to compare)")
    train.add_argument("--micro-batches", type=_checked(_number(int, 1, 64, what="a power of 2 up to 64")), default=1,
                       help="--model conv: gradient accumulation over this many interleaved parts of each batch "
                            "(one process with N does what torchrun with N processes does)")
    train.add_argument("--loss", choices=LOSSES, default="mixed",
                       help="reconstruction loss (mixed: alpha * L1 + (1 - alpha) * (1 - SSIM))")
    train.add_argument("--alpha", type=_checked(FRACTION),
                       help=f"pixel weight of the mixed loss (default {DEFAULTS['alpha']}); --loss mixed only")
    train.add_argument("--tied", action="store_true", help="tied weights: W_dec = W_enc^T")
    train.add_argument("--sparsity", type=_sparsity, help="l1:ALPHA or kl:RHO[:BETA] on the codes")
    train.add_argument("--hidden", type=_list(POSITIVE_INT, "hidden sizes"),
                       default=",".join(map(str, DEFAULTS["hidden"])), help="hidden layer sizes, e.g. 256,128 ('' for none)")
    train.add_argument("--activation", choices=list(ACTIVATIONS), default=DEFAULTS["activation"],
                       help="activation of the hidden layers")
    train.add_argument("--code-activation", choices=list(ACTIVATIONS), default=DEFAULTS["code_activation"],
                       help="activation of the code layer (sigmoid with --sparsity kl)")
    train.add_argument("--output-activation", choices=list(ACTIVATIONS), default=DEFAULTS["output_activation"],
                       help="activation of the output, fused into the loss (sigmoid with --loss bce)")
    train.add_argument("--center", action=argparse.BooleanOptionalAction, default=DEFAULTS["center"],
                       help="centre the inputs on the training mean and start the output there")
    train.add_argument("--schedule", choices=list(SCHEDULES), default=DEFAULTS["schedule"],
                       help="learning rate over the steps")
    train.add_argument("--bias-init", type=_checked(FINITE), default=0.01, help="initial biases (small positive: fewer dead ReLUs)")
    train.add_argument("--weight-decay", type=_checked(NON_NEGATIVE), default=0.0, help="L2 penalty on the weights")
    train.add_argument("--seed", type=_checked(SEED), default=0, help="seed of the initial weights")
    pareto = sub.add_parser("pareto", formatter_class=formatter, help="the L1 / SSIM Pareto front of the mixed loss",
                            description="Train one model per alpha of the mixed loss and plot the front.")
    _data_options(pareto, "passes over the data per model (default: 30, or 10 with --quick)")
    pareto.add_argument("--alphas", type=_list(FRACTION, "alphas"), default="0,0.25,0.5,0.75,1",
                        help="comma-separated alphas in [0, 1]")
    return top


CONV_ONLY = ("--crop", "--device", "--peer-loss", "--micro-batches")
DENSE_ONLY = ("--tied", "--sparsity", "--hidden", "--activation", "--code-activation", "--output-activation",
              "--center", "--no-center", "--schedule", "--bias-init", "--weight-decay", "--data")


def _given(flag, argv):
    """Whether ``flag`` is among the command's arguments (``argv``, or the process's when None)."""
    return any(a == flag or a.startswith(flag + "=") for a in (sys.argv[1:] if argv is None else argv))


def _check_conv(sub, args, argv):
    """--model conv: one line for each flag of the dense model given, for a loss it does not take, for a
    crop that is no multiple of 8, for --device cuda without a device, and when torch is missing."""
    lines = [f"argument {flag}: applies to --model dense only" for flag in DENSE_ONLY if _given(flag, argv)]
    if args.loss not in CONV_LOSSES:
        lines.append(f"argument --loss: --model conv takes {', '.join(CONV_LOSSES)}; got {args.loss!r}")
    if args.micro_batches & (args.micro_batches - 1):
        lines.append(f"argument --micro-batches: expected a power of 2 up to 64, got {args.micro_batches}")
    if args.crop % 8:
        lines.append(f"argument --crop: expected a multiple of 8 in [16, 128], got {args.crop}")
    try:
        import torch
    except ImportError:
        lines.append("argument --model: conv needs PyTorch (pip install 'fastae[torch]')")
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            lines.append("argument --device: cuda, but torch sees no CUDA device")
    if lines:
        sub.exit(2, "".join(f"{sub.prog}: error: {line}\n" for line in lines))


def _check_cuda_bench(sub):
    """bench --cuda needs torch with a CUDA device and CuPy: one error line otherwise (it was a traceback)."""
    try:
        import torch
    except ImportError:
        sub.error("argument --cuda: needs PyTorch with CUDA (pip install 'fastae[torch]')")
    if not torch.cuda.is_available():
        sub.error("argument --cuda: torch sees no CUDA device")
    from . import cuda
    try:
        cuda.cupy()
    except ImportError:
        sub.error("argument --cuda: needs CuPy (pip install 'fastae[cuda]')")


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    sub = p._subparsers._group_actions[0].choices.get(args.command)
    sub.check(args)
    if args.command == "train":
        given = argv if argv is not None else sys.argv[1:]
        if args.model == "conv":
            _check_conv(sub, args, given)
        else:
            lines = [f"argument {flag}: applies to --model conv only (the dense model trains on NumPy, on the CPU)"
                     for flag in CONV_ONLY if _given(flag, given)]
            if lines:
                sub.exit(2, "".join(f"{sub.prog}: error: {line}\n" for line in lines))
    if args.command == "train":
        if args.alpha is not None and args.loss != "mixed":
            sub.error(f"argument --alpha: applies to --loss mixed only (--loss is {args.loss})")
        if args.alpha is None and args.loss == "mixed":
            args.alpha = DEFAULTS["alpha"]
        if args.sparsity and args.sparsity[0] == "kl":
            if "--code-activation" in (argv if argv is not None else sys.argv):
                if args.code_activation != "sigmoid":
                    sub.error("argument --code-activation: --sparsity kl needs codes in (0, 1): sigmoid")
            args.code_activation = "sigmoid"
        if args.loss == "bce" and args.model == "dense":  # (its outputs must be probabilities)
            if _given("--output-activation", argv) and args.output_activation != "sigmoid":
                sub.error("argument --output-activation: --loss bce needs outputs in [0, 1]: sigmoid")
            args.output_activation = "sigmoid"
    if args.command == "pareto" and not args.alphas:
        sub.error("argument --alphas: give at least one alpha")
    if args.command in ("train", "pareto"):
        try:  # (before the job: a directory that cannot be made would fail it at its end)
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            sub.error(f"argument --out: cannot make the directory {args.out!r}: {e.strerror}")
        if not os.access(args.out, os.W_OK | os.X_OK):
            sub.error(f"argument --out: cannot write into {args.out!r}")
        args.epochs = args.epochs or (10 if args.quick else 30)
        args.code = args.code or (8 if getattr(args, "model", "dense") == "conv" else DEFAULTS["code"])
        from . import train as train_module
        (train_module.run_train if args.command == "train" else train_module.run_pareto)(args)
        return 0
    if args.command == "compile":
        from .warm import warm_up
        start = time.perf_counter()
        seconds = warm_up(args.jobs, args.dtype or ["float32"], args.processes)
        for (job, dtype), spent in seconds.items():
            print(f"compiled {job} ({dtype}) in {spent:.1f} s")
        print(f"all in {time.perf_counter() - start:.1f} s; cached for this install")
        return 0
    if args.cuda:
        _check_cuda_bench(sub)
        from . import bench_cuda
        bench_cuda.main(repeats=args.repeats or 7)
    else:
        from . import bench as bench_module
        bench_module.main(quick=args.quick, sizes=args.size, dtypes=args.dtype, threads=args.threads,
                          repeats=args.repeats)
    return 0


def command():
    """The ``fastae`` command and ``python -m fastae``: main() on the process's arguments. A torchrun worker
    then ends at once, without finalizing the interpreter: gloo's worker threads outlive the process group
    (DistributedDataParallel leaves it referenced from C++, so destroy_process_group does not join them)
    and one may drop the last C++ reference to a tensor Python owns after finalization began; taking the
    GIL then ends that thread inside a destructor and aborts the process ("terminate called without an
    active exception"; 2 runs in 25 on a busy machine). Every file the job wrote is closed by then."""
    status = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(command())
