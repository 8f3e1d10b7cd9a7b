"""`python -m data_tools COMMAND ...`: build, inspect and validate dataset files.

Exit codes: 0 success; 2 bad input (message `error: FILE: what is wrong`, no traceback);
1 anything else (a bug: the traceback is shown). Outputs are written to a temporary file
and renamed, so a failed or interrupted command never leaves a partial output file.
"""

import argparse
import os
import signal
import sys
import threading
import time

from data_tools import __version__
from data_tools.common import log, report_written
from distbelief_mpi.data.hdf5 import read_info
from distbelief_mpi.data.writer import remove_pending_temp_files
from distbelief_mpi.errors import UserInputError

DESCRIPTION = """\
Build and check dataset files for distbelief-mpi (HDF5, schema 1; see docs/datasets.md).

commands:
  digits         scikit-learn's 8x8 digits (1,797 images), seeded stratified split
  fashion-mnist  Fashion-MNIST from the gzipped IDX files (SHA-256 checked)
  speech-frames  synthetic 440-input / 8192-class frames like the paper's speech model
  from-npz       convert your own .npz with x_train, y_train, x_test, y_test
  from-hdf5      convert datasets of your own HDF5 file, streaming in blocks
  inspect        print a file's attributes, datasets, filters and class counts
  validate       read a whole file, verify checksums, labels and values

Run `python -m data_tools COMMAND --help` for a command's options."""


def fraction(text: str) -> float:
    """A float in (0, 1); also accepts 'a/b'."""
    value = positive_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def positive_float(text: str) -> float:
    try:
        num, _, den = text.partition("/")
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def count(text: str) -> int:
    try:
        value = int(float(text)) if "e" in text.lower() else int(text)  # allow 1e6
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def add_conversion_options(p: argparse.ArgumentParser, stem_of: str) -> None:
    """Options shared by from-npz and from-hdf5."""
    p.add_argument("--name", default=None, help=f"dataset name (default: the stem of {stem_of})")
    p.add_argument(
        "--n-classes", type=count, default=None, metavar="K", help="number of classes (default: largest label + 1)"
    )
    p.add_argument(
        "--x-scale",
        type=positive_float,
        default=1.0,
        metavar="S",
        help="model input = stored x * S; e.g. 1/255 for 0..255 pixels (default 1.0)",
    )
    p.add_argument(
        "--layout",
        choices=("nchw", "nhwc"),
        default=None,
        help="4-D x only: channels first (n, C, H, W) or last (n, H, W, C); "
        "default: NHWC when the last axis is 1 or 3 and smaller than the two before it, else NCHW (logged)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"data_tools {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "digits",
        help="scikit-learn 8x8 digits",
        description="Write scikit-learn's bundled digits (8x8, values 0..16) "
        "as uint8, x_scale 1/16, input_shape (1, 8, 8), with a "
        "seeded stratified train/test split.",
    )
    p.add_argument("out", metavar="OUT.h5")
    p.add_argument(
        "--test-fraction", type=fraction, default=0.2, help="share of each class put in the test split (default 0.2)"
    )
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")

    p = sub.add_parser(
        "fashion-mnist",
        help="Fashion-MNIST from IDX files",
        description="Write Fashion-MNIST (60,000 train + 10,000 test, 28x28) "
        "as uint8, x_scale 1/255, input_shape (1, 28, 28). The "
        "IDX headers and the SHA-256 of every decompressed file "
        "are checked against the upstream files.",
    )
    p.add_argument("out", metavar="OUT.h5")
    p.add_argument(
        "--source",
        metavar="DIR",
        default=None,
        help="directory with the four *-ubyte.gz files "
        "(default /usr/share/datasets/fashion-mnist, from the Debian "
        "package dataset-fashion-mnist)",
    )

    p = sub.add_parser(
        "speech-frames",
        help="synthetic speech-like frames",
        description="Write N synthetic float32 examples of 440 inputs "
        "(11 frames x 40 log-energies) with 8192 classes, "
        "drawn around seeded random class prototypes so they are "
        "learnable. Generated in blocks: N=1e6 needs ~100 MB RAM "
        "(and ~2 GB of disk).",
    )
    p.add_argument("out", metavar="OUT.h5")
    p.add_argument("--n", type=count, required=True, help="training examples (e.g. 1e6)")
    p.add_argument("--n-test", type=count, default=None, help="test examples (default N/10, at least 1)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")

    p = sub.add_parser(
        "from-npz",
        help="convert your own .npz",
        description="Convert IN.npz holding x_train, y_train, x_test, y_test. "
        "x (n, D) -> input_shape (D,); (n, H, W) -> (1, H, W); 4-D x is "
        "NCHW or NHWC (--layout; without it guessed and the guess logged) "
        "and stored NCHW. x is stored as uint8 if it is integers in 0..255, "
        "else float32. Labels must be non-negative integers.",
    )
    p.add_argument("npz", metavar="IN.npz")
    p.add_argument("out", metavar="OUT.h5")
    add_conversion_options(p, stem_of="the npz file")

    p = sub.add_parser(
        "from-hdf5",
        help="convert datasets of your own HDF5 file",
        description="Convert x and y datasets of SRC.h5 (any paths) to OUT.h5, "
        "reading a block of rows at a time (the source is never held whole "
        "in memory). The test split is other datasets of SRC.h5 "
        "(--x-test, --y-test) or a seeded random share of the rows "
        "(--test-fraction, --seed). Layout and dtype rules as from-npz.",
    )
    p.add_argument("src", metavar="SRC.h5")
    p.add_argument("out", metavar="OUT.h5")
    p.add_argument("--x", required=True, metavar="PATH", help="dataset of training inputs, e.g. /images")
    p.add_argument("--y", required=True, metavar="PATH", help="dataset of training labels, e.g. /labels")
    test = p.add_mutually_exclusive_group(required=True)
    test.add_argument("--x-test", metavar="PATH", help="dataset of test inputs (with --y-test)")
    test.add_argument(
        "--test-fraction",
        type=fraction,
        metavar="F",
        help="share of the rows of --x/--y held out for test, chosen at random",
    )
    p.add_argument("--y-test", metavar="PATH", help="dataset of test labels (with --x-test)")
    p.add_argument("--seed", type=int, default=0, metavar="SEED", help="seed of the --test-fraction choice (default 0)")
    add_conversion_options(p, stem_of="SRC.h5")

    p = sub.add_parser(
        "inspect",
        help="describe a dataset file",
        description="Print attributes, each dataset's shape, dtype, chunks and filters, and class counts per split.",
    )
    p.add_argument("file", metavar="FILE.h5")

    p = sub.add_parser(
        "validate",
        help="fully check a dataset file",
        description="Read every dataset completely (verifying fletcher32 "
        "checksums), check labels are in range and x is finite. "
        "Prints 'FILE: ok (...)' or exits 2 with the problem.",
    )
    p.add_argument("file", metavar="FILE.h5")
    return parser


def check_option_pairs(parser: argparse.ArgumentParser, args) -> None:
    """Usage errors argparse cannot express (exit 2 with the usage line)."""
    if args.command == "from-hdf5" and (args.x_test is None) != (args.y_test is None):
        parser.error("from-hdf5: --x-test and --y-test go together (or use --test-fraction)")


def run_command(args) -> None:
    started = time.perf_counter()
    if args.command == "inspect":
        from data_tools.report import inspect_lines

        print("\n".join(inspect_lines(args.file)))
        return
    if args.command == "validate":
        from data_tools.report import validate_lines

        print("\n".join(validate_lines(args.file)))
        return
    build(args)
    report_written(read_info(args.out), time.perf_counter() - started)


def build(args) -> None:
    if args.command == "digits":
        from data_tools.digits import build_digits

        log("loading scikit-learn digits")
        build_digits(args.out, test_fraction=args.test_fraction, seed=args.seed)
    elif args.command == "fashion-mnist":
        from data_tools.fashion_mnist import DEFAULT_SOURCE_DIR, build_fashion_mnist

        build_fashion_mnist(args.out, source_dir=args.source or DEFAULT_SOURCE_DIR, log=log)
    elif args.command == "speech-frames":
        from data_tools.speech_frames import build_speech_frames

        n_test = args.n_test or max(1, args.n // 10)
        log(f"generating {args.n} train + {n_test} test synthetic frames")
        build_speech_frames(args.out, args.n, n_test, seed=args.seed, log=log)
    elif args.command == "from-npz":
        from data_tools.from_npz import build_from_npz

        build_from_npz(
            args.npz,
            args.out,
            name=args.name,
            n_classes=args.n_classes,
            x_scale=args.x_scale,
            layout=args.layout,
            log=log,
        )
    elif args.command == "from-hdf5":
        from data_tools.from_hdf5 import build_from_hdf5

        build_from_hdf5(args, log=log)


class exit_cleanly_on_signals:
    """While a command runs, SIGINT / SIGTERM delete any half-written temporary output
    and exit at once (130 / 143). Done in the handler itself, not by raising
    KeyboardInterrupt, which Python may swallow if the signal lands inside a finalizer.
    SIGKILL cannot be caught: it may leave a hidden `.OUT.h5.*.tmp` beside the output,
    never a file under the output name."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._exit) for sig in self.SIGNALS}
        return self

    @staticmethod
    def _exit(signum, frame):
        remove_pending_temp_files()
        name = signal.Signals(signum).name
        os.write(2, f"error: stopped by {name}; no output file was left behind\n".encode())
        os._exit(128 + signum)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code instead of exiting (tests call it in-process)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        check_option_pairs(parser, args)
    except SystemExit as e:  # --help, --version or a usage error (argparse prints it)
        return int(e.code or 0)
    try:
        with exit_cleanly_on_signals():
            run_command(args)
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0
