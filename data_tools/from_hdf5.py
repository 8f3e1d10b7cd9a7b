"""`from-hdf5`: convert datasets of an existing HDF5 file to schema 1, streaming in blocks.

SRC.h5 holds x (n, ...) and y (n,) under any dataset paths (--x, --y). The test split is
either other datasets of the same file (--x-test, --y-test) or a seeded random share of
the rows (--test-fraction F --seed S: exactly round(F * n) rows, at least 1 and at most
n - 1, chosen with numpy.random.default_rng(S); both splits keep the source's row order).
Layout and dtype rules are from-npz's (data_tools/convert.py, data_tools/layout.py).
"""

import os
from pathlib import Path

import h5py
import numpy as np

from data_tools.convert import SourceSplit, convert
from distbelief_mpi.data.hdf5 import open_for_reading
from distbelief_mpi.errors import DatasetError

MAX_LISTED = 20  # datasets listed when a path is missing


def list_datasets(f: h5py.File) -> list[str]:
    """'/path (shape) dtype' for every dataset in the file, in HDF5's order."""
    found: list[str] = []

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append(f"/{name} {obj.shape} {obj.dtype}")

    f.visititems(visit)
    return found


def dataset_at(src: Path, f: h5py.File, key: str) -> h5py.Dataset:
    """f[key], or a DatasetError naming the path and listing the file's datasets."""
    obj = f.get(key)
    if isinstance(obj, h5py.Dataset):
        return obj
    what = "is a group, not a dataset" if isinstance(obj, h5py.Group) else "does not exist"
    there = list_datasets(f)
    listing = ", ".join(there[:MAX_LISTED]) + (f", ... ({len(there)} in all)" if len(there) > MAX_LISTED else "")
    raise DatasetError(src, f"{key} {what}; the file holds: {listing or 'no datasets'}")


def held_out_rows(n: int, fraction: float, seed: int) -> np.ndarray:
    """bool (n,): the rows of a seeded random test split of round(fraction * n) rows."""
    if n < 2:
        raise ValueError("needs at least 2 rows")
    k = min(n - 1, max(1, round(fraction * n)))
    chosen = np.zeros(n, dtype=bool)
    chosen[np.random.default_rng(seed).choice(n, size=k, replace=False)] = True
    return chosen


def source_splits(src: Path, f: h5py.File, args) -> dict[str, SourceSplit]:
    x, y = dataset_at(src, f, args.x), dataset_at(src, f, args.y)
    if args.x_test is not None:
        x_test, y_test = dataset_at(src, f, args.x_test), dataset_at(src, f, args.y_test)
        return {
            "train": SourceSplit(x, y, x.name, y.name),
            "test": SourceSplit(x_test, y_test, x_test.name, y_test.name),
        }
    if len(y.shape) != 1 or x.shape[:1] != y.shape or len(y) < 2:  # x may be a scalar dataset
        raise DatasetError(
            src, f"--test-fraction needs {x.name} (n, ...) and {y.name} (n,) with n >= 2; got {x.shape} and {y.shape}"
        )
    test = held_out_rows(len(y), args.test_fraction, args.seed)
    return {
        "train": SourceSplit(x, y, x.name, y.name, rows=~test),
        "test": SourceSplit(x, y, x.name, y.name, rows=test),
    }


def describe_split(args) -> str:
    if args.x_test is not None:
        return f"x {args.x}, y {args.y}, test x {args.x_test}, test y {args.y_test}"
    return f"x {args.x}, y {args.y}, test split {args.test_fraction:g} of the rows with seed {args.seed}"


def build_from_hdf5(args, log=None) -> None:
    """args: the parsed `from-hdf5` options (src, out, x, y, x_test, y_test, test_fraction,
    seed, layout, name, n_classes, x_scale)."""
    src = Path(args.src)
    if Path(args.out).exists() and src.exists() and os.path.samefile(args.out, src):
        raise DatasetError(src, "the output would replace the source file; choose another OUT.h5")
    with open_for_reading(src) as f:
        splits = source_splits(src, f, args)
        if log:
            log(f"converting {src} ({describe_split(args)}): {splits['train'].n} train + {splits['test'].n} test rows")
        convert(
            src,
            args.out,
            splits,
            name=args.name or src.stem,
            source_text=f"converted from {src.name} ({describe_split(args)})",
            layout=args.layout,
            n_classes=args.n_classes,
            x_scale=args.x_scale,
            log=log,
        )
