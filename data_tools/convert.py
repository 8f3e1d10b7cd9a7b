"""Convert a user's x, y arrays (in memory or h5py datasets) to a schema-1 file, in blocks.

Used by `from-npz` and `from-hdf5`. Two passes over the source, each a block of rows at
a time, so an HDF5 source is never held whole in memory:

1. scan: shapes, label dtype and range, x dtype and range, NaN / infinity; everything is
   checked before the output is created, so bad input leaves no file behind;
2. write: each block is selected (a --test-fraction split), moved to channels-first,
   cast to the storage dtype and appended by DatasetWriter (temporary file + rename).

x is stored as uint8 when every x array is integers in 0..255, else as float32.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_tools import CREATED_BY
from data_tools.layout import RowLayout, resolve_layout
from distbelief_mpi.data.writer import DatasetWriter
from distbelief_mpi.errors import DatasetError

# A numpy.ndarray or an h5py.Dataset: anything with .shape, .dtype, len() and [lo:hi].
RowArray = Any

# Source bytes of x read per block (both passes); tests shrink it to force many blocks.
BLOCK_BYTES = 32 << 20


@dataclass
class SourceSplit:
    """One split's arrays as the user gave them. x: (n, *row), y: (n,), numpy or h5py.
    rows: which of the n source rows belong to this split (bool (n,)), or None for all."""

    x: RowArray
    y: RowArray
    x_name: str
    y_name: str
    rows: np.ndarray | None = None

    @property
    def n(self) -> int:
        if self.rows is not None:
            return int(self.rows.sum())
        return self.y.shape[0] if self.y.shape else 0  # a scalar y is refused by check_shapes

    def blocks(self, source):
        """(source row numbers, x_block, y_block) for consecutive blocks of source rows, only
        this split's rows kept: (k,), (k, *row), (k,)."""
        row_bytes = max(1, int(np.prod(self.x.shape[1:], dtype=np.int64)) * self.x.dtype.itemsize)
        step = max(1, BLOCK_BYTES // row_bytes)
        for lo in range(0, len(self.y), step):
            hi = min(lo + step, len(self.y))
            if self.rows is not None and not self.rows[lo:hi].any():
                continue
            x, y = read_rows(source, self.x, self.x_name, lo, hi), read_rows(source, self.y, self.y_name, lo, hi)
            numbers = np.arange(lo, hi)
            if self.rows is not None:
                keep = self.rows[lo:hi]
                numbers, x, y = numbers[keep], x[keep], y[keep]
            yield numbers, x, y


def read_rows(source, array, name: str, lo: int, hi: int) -> np.ndarray:
    """array[lo:hi] as numpy; an h5py read failure becomes a DatasetError naming file and key."""
    try:
        return np.asarray(array[lo:hi])
    except OSError as e:
        raise DatasetError(source, f"{name}: read failed at rows {lo}:{hi}: {e}") from None


@dataclass
class Scan:
    """What the first pass learned: storage dtype and the largest label."""

    x_dtype: np.dtype
    max_label: int


def check_shapes(source, splits: dict[str, SourceSplit]) -> None:
    train = splits["train"]
    for split in splits.values():
        if len(split.x.shape) not in (2, 3, 4):
            raise DatasetError(
                source, f"{split.x_name} has shape {split.x.shape}; expected (n, D), (n, H, W) or 4-D images"
            )
        if split.x.shape[1:] != train.x.shape[1:]:
            raise DatasetError(
                source,
                f"{split.x_name} rows have shape {split.x.shape[1:]} but {train.x_name} rows have {train.x.shape[1:]}",
            )
        if len(split.y.shape) != 1:
            raise DatasetError(source, f"{split.y_name} has shape {split.y.shape}, expected (n,)")
        if len(split.y) != len(split.x):
            raise DatasetError(source, f"{split.x_name} has {len(split.x)} rows but {split.y_name} has {len(split.y)}")
        if split.n == 0:
            raise DatasetError(source, f"{split.x_name} and {split.y_name} are empty")
        if not np.issubdtype(split.y.dtype, np.integer):
            raise DatasetError(source, f"{split.y_name} has dtype {split.y.dtype}; labels must be integers")
        if split.x.dtype.kind not in "iufb":
            raise DatasetError(source, f"{split.x_name} has dtype {split.x.dtype}; expected numbers")


def scan(source, splits: dict[str, SourceSplit]) -> Scan:
    """Pass 1: every label >= 0, every x finite (as float32), the storage dtype."""
    fits_uint8, max_label = True, 0
    for split in splits.values():
        integer_x = np.issubdtype(split.x.dtype, np.integer)
        fits_uint8 &= integer_x
        for numbers, x, y in split.blocks(source):
            if (negative := np.flatnonzero(y < 0)).size:
                row = negative[0]
                raise DatasetError(source, f"{split.y_name} contains negative label {int(y[row])} (row {numbers[row]})")
            max_label = max(max_label, int(y.max()))
            if integer_x:
                fits_uint8 &= bool(0 <= x.min() and x.max() <= 255)
            elif (bad := _non_finite_rows(x)).size:
                raise DatasetError(
                    source,
                    f"{split.x_name} contains NaN or infinite values (as float32), first in row {numbers[bad[0]]}",
                )
    return Scan(np.dtype(np.uint8 if fits_uint8 else np.float32), max_label)


def _non_finite_rows(x: np.ndarray) -> np.ndarray:
    """Indices of the rows of x (k, ...) holding NaN or infinity once cast to float32."""
    return np.flatnonzero(~np.isfinite(x.astype(np.float32, copy=False)).reshape(len(x), -1).all(axis=1))


def convert(
    source,
    out_path,
    splits: dict[str, SourceSplit],
    *,
    name: str,
    source_text: str,
    layout: str | None,
    n_classes: int | None,
    x_scale: float,
    log: Callable[[str], None] | None = None,
) -> None:
    """Check (pass 1), then write (pass 2) splits {"train": ..., "test": ...} to out_path."""
    check_shapes(source, splits)
    train = splits["train"]
    rows = resolve_layout(source, train.x_name, tuple(train.x.shape[1:]), layout, log)
    found = scan(source, splits)
    if n_classes is None:
        n_classes = found.max_label + 1
    elif found.max_label >= n_classes:
        raise DatasetError(source, f"label {found.max_label} does not fit --n-classes {n_classes}")
    if log and found.x_dtype == np.uint8 and x_scale == 1.0:
        log("note: x is stored as uint8 with x_scale 1.0; pass --x-scale 1/255 if these are 0..255 pixels")
    writer = DatasetWriter(
        out_path,
        name=name,
        source=source_text,
        n_classes=n_classes,
        input_shape=rows.input_shape,
        x_dtype=found.x_dtype,
        n_rows={split: s.n for split, s in splits.items()},
        x_scale=x_scale,
        synthetic=False,
        created_by=CREATED_BY,
    )
    with writer:
        for split, source_split in splits.items():
            _write_split(source, writer, split, source_split, rows, found.x_dtype)


def _write_split(source, writer: DatasetWriter, split: str, s: SourceSplit, rows: RowLayout, x_dtype) -> None:
    for _, x, y in s.blocks(source):
        writer.append(split, rows.to_stored(x).astype(x_dtype, copy=False), y)
