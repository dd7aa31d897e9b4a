"""The ``fastae`` command."""
import argparse


def _size(text):
    return 1 << int(text[2:]) if text.startswith("2^") else int(text)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmark the kernels against the streaming ceiling and PyTorch")
    bench.add_argument("--quick", action="store_true", help="one size, float32, few repeats (under a minute)")
    bench.add_argument("--size", type=_size, action="append", help="element count, e.g. 2^24 (repeatable)")
    bench.add_argument("--dtype", choices=["float32", "float64"], action="append")
    bench.add_argument("--threads", type=int, help="threads for fastae and torch (default: all cores)")
    bench.add_argument("--repeats", type=int)
    args = parser.parse_args(argv)
    if args.command == "bench":
        from . import bench as bench_module
        bench_module.main(quick=args.quick, sizes=args.size, dtypes=args.dtype, threads=args.threads,
                          repeats=args.repeats)


if __name__ == "__main__":
    main()
