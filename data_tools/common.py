"""Helpers shared by the data_tools commands."""

import sys
from pathlib import Path

from distbelief_mpi.data.hdf5 import DatasetInfo


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays clean for inspect/validate reports."""
    print(f"data_tools: {message}", file=sys.stderr, flush=True)


def describe(info: DatasetInfo) -> str:
    shape = "x".join(map(str, info.input_shape))
    return f"{info.name}, {info.n_classes} classes, input {shape}, {info.n_train} train + {info.n_test} test examples"


def report_written(info: DatasetInfo, seconds: float) -> None:
    size_mb = Path(info.path).stat().st_size / 1e6
    log(f"wrote {info.path} ({describe(info)}; {size_mb:.1f} MB) in {seconds:.1f} s")
