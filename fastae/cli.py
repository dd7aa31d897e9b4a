"""The ``fastae`` command."""
import argparse


def _size(text):
    return 1 << int(text[2:]) if text.startswith("2^") else int(text)


def _data_options(p):
    p.add_argument("--data", choices=["patches", "digits"], default="patches")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--code", type=int, default=32, help="code size k")
    p.add_argument("--out", default="fastae-out")
    p.add_argument("--quick", action="store_true", help="fewer patches and epochs (under two minutes)")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmark the kernels against the streaming ceiling and PyTorch")
    bench.add_argument("--quick", action="store_true", help="one size, float32, few repeats (under a minute)")
    bench.add_argument("--size", type=_size, action="append", help="element count, e.g. 2^24 (repeatable)")
    bench.add_argument("--dtype", choices=["float32", "float64"], action="append")
    bench.add_argument("--threads", type=int, help="threads for fastae and torch (default: all cores)")
    bench.add_argument("--repeats", type=int)
    bench.add_argument("--cuda", action="store_true", help="the GPU benchmark (needs CuPy, torch on CUDA and a device)")
    train = sub.add_parser("train", help="train an autoencoder on real images")
    _data_options(train)
    train.add_argument("--loss", choices=["mse", "l1", "bce", "ssim", "mixed"], default="mixed")
    train.add_argument("--alpha", type=float, help="pixel weight of the mixed loss (default 0.16)")
    train.add_argument("--tied", action="store_true", help="tied weights: W_dec = W_enc^T")
    train.add_argument("--sparsity", help="l1:ALPHA or kl:RHO[:BETA] on the codes")
    train.add_argument("--hidden", default="128", help="hidden layer sizes, e.g. 256,128 ('' for none)")
    train.add_argument("--bias-init", type=float, default=0.01, help="initial biases (small positive: fewer dead ReLUs)")
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    train.add_argument("--seed", type=int, default=0)
    pareto = sub.add_parser("pareto", help="the L1 / SSIM Pareto front of the mixed loss")
    _data_options(pareto)
    pareto.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    args = parser.parse_args(argv)
    if args.command in ("train", "pareto"):
        if args.quick:
            args.epochs = args.epochs or 10
        args.epochs = args.epochs or 30
        from . import train as train_module
        (train_module.run_train if args.command == "train" else train_module.run_pareto)(args)
        return 0
    if args.command == "bench" and args.cuda:
        from . import bench_cuda
        bench_cuda.main(repeats=args.repeats or 7)
    elif args.command == "bench":
        from . import bench as bench_module
        bench_module.main(quick=args.quick, sizes=args.size, dtypes=args.dtype, threads=args.threads,
                          repeats=args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
