"""Read, check and write schema-1 dataset files (one HDF5 file per dataset).

Layout (docs/datasets.md): /train/x, /train/y, /test/x, /test/y; x is (n, *input_shape)
uint8 or float32, y is (n,) integer labels in [0, n_classes); every dataset is chunked
with the fletcher32 checksum filter. The trainer reads x as float32 = stored x * x_scale.

Every problem with a file becomes a DatasetError naming the file and what is wrong.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from distbelief_mpi.data.locking import LOCKING_HINT, is_lock_failure
from distbelief_mpi.data.schema import (
    CONTENT_DIGEST_ATTR,
    REQUIRED_ATTRS,
    SCHEMA_VERSION,
    SPLITS,
    X_DTYPES,
    ContentDigest,
    class_count_problem,
    dataset_path,
)
from distbelief_mpi.data.writer import DatasetWriter
from distbelief_mpi.errors import DatasetError

# validate() reads in blocks of about this many bytes of x, so huge files fit in memory.
VALIDATE_BLOCK_BYTES = 64 << 20
# h5py/HDF5 raise these when a file's structure is damaged in ways open() did not notice.
_H5_ERRORS = (OSError, RuntimeError, ValueError, KeyError, TypeError)


@dataclass(frozen=True)
class DatasetInfo:
    path: str
    name: str
    source: str
    n_classes: int
    input_shape: tuple[int, ...]
    n_train: int
    n_test: int
    x_scale: float
    synthetic: bool
    schema_version: int
    content_sha256: str = ""  # the stored contents' SHA-256 (schema.ContentDigest); "" in older files

    def n_examples(self, split: str) -> int:
        return {"train": self.n_train, "test": self.n_test}[split]


# -- opening and structural checks -----------------------------------------------------
class DatasetAbsent(DatasetError):
    """The dataset file does not exist (`distbelief plan` can do without it; nothing else can)."""


def open_for_reading(path) -> h5py.File:
    """h5py.File(path, "r"), with every failure a DatasetError naming the file."""
    p = Path(path)
    if not p.exists():
        raise DatasetAbsent(p, "file not found")
    if p.is_dir():
        raise DatasetError(p, "is a directory, not a dataset file")
    try:
        return h5py.File(p, "r")
    except OSError as e:
        if is_lock_failure(e):
            raise DatasetError(p, f"cannot lock the file for reading ({_h5_reason(e)}): {LOCKING_HINT}") from None
        raise DatasetError(
            p, f"not a readable HDF5 file (truncated, zeroed or another format): {_h5_reason(e)}"
        ) from None


def _h5_reason(e: Exception) -> str:
    """h5py messages look like 'Unable to open file (file signature not found)'."""
    text = str(e)
    return text[text.find("(") + 1 : text.rfind(")")] if "(" in text else text


def _attr(f: h5py.File, path, key: str):
    if key not in f.attrs:
        hint = " (not a distbelief-mpi dataset file?)" if key == "schema_version" else ""
        raise DatasetError(path, f"missing root attribute '{key}'{hint}")
    value = f.attrs[key]
    try:
        return _convert_attr(value, REQUIRED_ATTRS[key])
    except (TypeError, ValueError):
        raise DatasetError(
            path, f"root attribute '{key}' = {value!r} is not a valid {REQUIRED_ATTRS[key].__name__}"
        ) from None


def _convert_attr(value, kind):
    if kind is str:
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if not isinstance(value, str):
            raise TypeError
        return value
    arr = np.asarray(value)
    if kind is tuple:
        if arr.dtype.kind not in "iu" or arr.ndim > 1:
            raise TypeError
        return tuple(int(v) for v in arr.ravel())
    if arr.ndim != 0:
        raise TypeError
    if kind is int:
        if arr.dtype.kind not in "iu":
            raise TypeError
        return int(arr)
    if kind is bool:
        if arr.dtype.kind not in "biu" or int(arr) not in (0, 1):
            raise TypeError
        return bool(arr)
    if arr.dtype.kind not in "iuf":  # float
        raise TypeError
    return float(arr)


def _read_attrs(f: h5py.File, path) -> dict:
    version = _attr(f, path, "schema_version")
    if version != SCHEMA_VERSION:
        raise DatasetError(path, f"unsupported schema_version {version} (this reader supports {SCHEMA_VERSION})")
    attrs = {key: _attr(f, path, key) for key in REQUIRED_ATTRS}
    shape = attrs["input_shape"]
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise DatasetError(path, f"input_shape {shape} must be (D,) or (C, H, W), positive")
    if problem := class_count_problem(attrs["n_classes"]):
        raise DatasetError(path, problem)
    if not (math.isfinite(attrs["x_scale"]) and attrs["x_scale"] > 0):
        raise DatasetError(path, f"x_scale {attrs['x_scale']} must be positive and finite")
    return attrs


def _dataset(f: h5py.File, path, name: str) -> h5py.Dataset:
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        raise DatasetError(path, f"missing dataset {name}")
    return obj


def _split_length(f: h5py.File, path, split: str, input_shape: tuple) -> int:
    """Checks /split/x and /split/y shapes and dtypes; returns n."""
    x_name, y_name = dataset_path(split, "x"), dataset_path(split, "y")
    x, y = _dataset(f, path, x_name), _dataset(f, path, y_name)
    if x.ndim != 1 + len(input_shape) or x.shape[1:] != input_shape:
        raise DatasetError(
            path, f"{x_name} has shape {x.shape}, expected (n, {', '.join(map(str, input_shape))}) from input_shape"
        )
    if x.dtype not in X_DTYPES:
        raise DatasetError(path, f"{x_name} has dtype {x.dtype}, expected uint8 or float32")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(path, f"{y_name} has shape {y.shape} dtype {y.dtype}, expected (n,) integer labels")
    if len(x) != len(y):
        raise DatasetError(path, f"{x_name} has {len(x)} rows but {y_name} has {len(y)}")
    if len(x) == 0:
        raise DatasetError(path, f"{x_name} is empty; every split needs at least one example")
    return len(x)


def _info_from_open(f: h5py.File, path) -> DatasetInfo:
    try:
        attrs = _read_attrs(f, path)
        shape = attrs["input_shape"]
        n = {split: _split_length(f, path, split, shape) for split in SPLITS}
    except _H5_ERRORS as e:
        raise DatasetError(path, f"damaged file structure: {_h5_reason(e)}") from None
    return DatasetInfo(
        path=str(path),
        name=attrs["name"],
        source=attrs["source"],
        n_classes=attrs["n_classes"],
        input_shape=shape,
        n_train=n["train"],
        n_test=n["test"],
        x_scale=attrs["x_scale"],
        synthetic=attrs["synthetic"],
        schema_version=attrs["schema_version"],
        content_sha256=str(f.attrs.get(CONTENT_DIGEST_ATTR, "")),
    )


def read_info(path) -> DatasetInfo:
    """Cheap check: attributes, dataset presence, shapes and dtypes. No data is read."""
    with open_for_reading(path) as f:
        return _info_from_open(f, path)


# -- reading data ----------------------------------------------------------------------
def _read_rows(ds: h5py.Dataset, path, start: int, stop: int) -> np.ndarray:
    """ds[start:stop], with checksum and I/O failures turned into DatasetError."""
    try:
        return ds[start:stop]
    except OSError as e:
        reason = _h5_reason(e)
        # fletcher32 is the last filter written, so it is the first run on read: a
        # failed filter on damaged data is the checksum catching it.
        if "filter" in reason.lower() or "checksum" in reason.lower():
            what = "data is corrupted (fletcher32 checksum mismatch)"
        else:
            what = f"read failed: {reason}"
        raise DatasetError(path, f"{ds.name}: {what} while reading rows {start}:{stop}") from None


def read_split(path, split: str, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows start:stop of a split: x float32 (n, *input_shape) = stored x * x_scale,
    y int32 (n,)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    with open_for_reading(path) as f:
        info = _info_from_open(f, path)
        n = info.n_examples(split)
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise ValueError(f"rows {start}:{stop} out of range for {split} with {n} rows")
        x = _read_rows(f[dataset_path(split, "x")], path, start, stop)
        y = _read_rows(f[dataset_path(split, "y")], path, start, stop)
    _check_labels(path, dataset_path(split, "y"), y, start, info.n_classes)
    x = x.astype(np.float32, copy=False)
    if info.x_scale != 1.0:
        x *= np.float32(info.x_scale)
    return x, y.astype(np.int32, copy=False)


def _check_labels(path, name: str, y: np.ndarray, start: int, n_classes: int) -> None:
    """Labels outside [0, n_classes) would crash training mid-run: name the first bad row."""
    bad = np.flatnonzero((y < 0) | (y >= n_classes))
    if len(bad):
        row = start + int(bad[0])
        raise DatasetError(
            path, f"{name}[{row}] = {int(y[bad[0]])} is not a label in [0, {n_classes}) ({len(bad)} such rows)"
        )


# -- full validation -------------------------------------------------------------------
def _check_filters(ds: h5py.Dataset, path):
    if ds.chunks is None or not ds.fletcher32:
        raise DatasetError(
            path, f"{ds.name} is not chunked with the fletcher32 checksum filter (schema {SCHEMA_VERSION} requires it)"
        )


def _check_block(path, name: str, block: np.ndarray, offset: int, n_classes: int):
    if block.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))
        if len(bad):
            raise DatasetError(path, f"{name}[{offset + bad[0]}] contains NaN or infinity")
    elif name.endswith("/y"):
        _check_labels(path, name, block, offset, n_classes)


def _validate_dataset(ds: h5py.Dataset, path, n_classes: int, feed) -> None:
    """Read ds in blocks, checking each; feed(block) sees every block in row order."""
    _check_filters(ds, path)
    row_bytes = max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64)))
    step = max(1, VALIDATE_BLOCK_BYTES // row_bytes)
    for lo in range(0, len(ds), step):
        block = _read_rows(ds, path, lo, min(lo + step, len(ds)))
        _check_block(path, ds.name, block, lo, n_classes)
        feed(block)


def validate(path) -> DatasetInfo:
    """Full check: read_info, then read every dataset completely (verifying checksums),
    labels in range, x finite, every dataset chunked with fletcher32, and the contents against
    the file's content_sha256 when it has one."""
    digest = ContentDigest()
    with open_for_reading(path) as f:
        info = _info_from_open(f, path)
        for split in SPLITS:
            for field in ("x", "y"):
                feed = lambda block, s=split, k=field: digest.update(s, k, block)  # noqa: E731
                _validate_dataset(f[dataset_path(split, field)], path, info.n_classes, feed)
    if info.content_sha256 and digest.hexdigest() != info.content_sha256:
        raise DatasetError(
            path, f"the contents do not match the file's {CONTENT_DIGEST_ATTR} (the data changed after it was written)"
        )
    return info


# -- writing ---------------------------------------------------------------------------
def write_dataset(
    path,
    *,
    name: str,
    source: str,
    n_classes: int,
    input_shape,
    x_train,
    y_train,
    x_test,
    y_test,
    x_scale: float,
    synthetic: bool,
    extra_attrs: dict | None = None,
    created_by: str | None = None,
) -> None:
    """Write a whole dataset from in-memory arrays, atomically (temp file + rename).

    x_*: (n, *input_shape) uint8 or float32; y_*: (n,) integer labels in [0, n_classes).
    Everything is checked before the file appears; a bad input raises DatasetError.
    For data too big for memory use writer.DatasetWriter directly.
    """
    splits = {"train": (np.asarray(x_train), np.asarray(y_train)), "test": (np.asarray(x_test), np.asarray(y_test))}
    for split, (x, y) in splits.items():
        if x.ndim < 1 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(
                path, f"x_{split} has shape {x.shape} but y_{split} has shape {y.shape}; expected (n, ...) and (n,)"
            )
    writer = DatasetWriter(
        path,
        name=name,
        source=source,
        n_classes=n_classes,
        input_shape=input_shape,
        x_dtype=splits["train"][0].dtype,
        n_rows={s: len(xy[0]) for s, xy in splits.items()},
        x_scale=x_scale,
        synthetic=synthetic,
        extra_attrs=extra_attrs,
        created_by=created_by,
    )
    for split, (x, y) in splits.items():  # check everything before creating any file
        writer.check_block(split, x, y)
    with writer:
        for split, (x, y) in splits.items():
            writer.append(split, x, y)
