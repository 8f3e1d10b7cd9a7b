"""Atomic, streaming writer for schema-1 dataset files.

`DatasetWriter` writes into a hidden temporary file in the destination directory and
renames it over the final name only after every row and attribute is in place, so an
interrupted or failed write never leaves a half file under the final name. Rows are
appended in blocks, so a generator can write a 1e6-example split without holding it.
"""

import math
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np

from distbelief_mpi.data.locking import is_lock_failure
from distbelief_mpi.data.schema import (
    CONTENT_DIGEST_ATTR,
    REQUIRED_ATTRS,
    SCHEMA_VERSION,
    SPLITS,
    X_DTYPES,
    ContentDigest,
    class_count_problem,
    dataset_path,
    label_dtype,
    storage_options,
)
from distbelief_mpi.errors import DatasetError

DEFAULT_CREATED_BY = f"distbelief_mpi.data.writer (schema {SCHEMA_VERSION})"

# Temporary files of writers still in progress, so a signal handler (data_tools' CLI)
# can delete them before exiting on SIGTERM / Ctrl-C.
PENDING_TEMP_FILES: set[Path] = set()


def remove_pending_temp_files() -> None:
    for tmp in list(PENDING_TEMP_FILES):
        tmp.unlink(missing_ok=True)
        PENDING_TEMP_FILES.discard(tmp)


class DatasetWriter:
    """Context manager. Usage:

        with DatasetWriter(path, name=..., ..., n_rows={"train": n, "test": m}) as w:
            w.append("train", x_block, y_block)   # x_block (k, *input_shape), y_block (k,)
            ...
    On a clean exit every split must be full; then the file is renamed into place.
    """

    def __init__(
        self,
        path,
        *,
        name: str,
        source: str,
        n_classes: int,
        input_shape,
        x_dtype,
        n_rows: dict,
        x_scale: float,
        synthetic: bool,
        extra_attrs: dict | None = None,
        created_by: str | None = None,
    ):
        self.path = Path(path)
        self.n_classes = int(n_classes)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.x_dtype = np.dtype(x_dtype)
        self.n_rows = {s: int(n_rows[s]) for s in SPLITS}
        self.attrs = {
            "schema_version": SCHEMA_VERSION,
            "name": str(name),
            "source": str(source),
            "n_classes": self.n_classes,
            "input_shape": np.asarray(self.input_shape, np.int64),
            "x_scale": float(x_scale),
            "synthetic": bool(synthetic),
            "created_by": created_by or DEFAULT_CREATED_BY,
        }
        self.extra_attrs = dict(extra_attrs or {})
        self._check_header()
        self._filled = {s: 0 for s in SPLITS}
        self._digest = ContentDigest()  # of the rows as stored, fed as they are appended
        self._tmp_path: Path | None = None
        self._file: h5py.File | None = None

    # -- checks ---------------------------------------------------------------------
    def _fail(self, what: str):
        raise DatasetError(self.path, what)

    def _check_header(self):
        if not self.attrs["name"]:
            self._fail("name must not be empty")
        if problem := class_count_problem(self.n_classes):
            self._fail(problem)
        if len(self.input_shape) not in (1, 3) or min(self.input_shape) < 1:
            self._fail(f"input_shape must be (D,) or (C, H, W) with positive sizes, got {self.input_shape}")
        if self.x_dtype not in X_DTYPES:
            self._fail(f"x dtype must be uint8 or float32, got {self.x_dtype}")
        scale = self.attrs["x_scale"]
        if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
            self._fail(f"x_scale must be a positive finite number, got {scale}")
        for split, n in self.n_rows.items():
            if n < 1:
                self._fail(f"the {split} split is empty (it needs at least one example)")
        clash = sorted(set(self.extra_attrs) & set(REQUIRED_ATTRS))
        if clash:
            self._fail(f"extra_attrs may not override schema attributes {clash}")

    def check_block(self, split: str, x: np.ndarray, y: np.ndarray):
        """Raise DatasetError unless x, y can be the next rows of `split`."""
        where = f"{split} examples {self._filled[split]}.."
        if x.shape[1:] != self.input_shape:
            self._fail(f"{where}: x rows have shape {x.shape[1:]}, expected {self.input_shape}")
        if x.dtype != self.x_dtype:
            self._fail(f"{where}: x dtype is {x.dtype}, expected {self.x_dtype}")
        if y.ndim != 1 or len(y) != len(x):
            self._fail(f"{where}: y has shape {y.shape}, expected ({len(x)},)")
        if not np.issubdtype(y.dtype, np.integer):
            self._fail(f"{where}: labels must be integers, got dtype {y.dtype}")
        if len(y) and (y.min() < 0 or y.max() >= self.n_classes):
            self._fail(f"{where}: labels must lie in [0, {self.n_classes}), found {int(y.min())}..{int(y.max())}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            self._fail(f"{where}: x contains NaN or infinite values")
        if self._filled[split] + len(x) > self.n_rows[split]:
            self._fail(f"{split}: more rows appended than the declared {self.n_rows[split]}")

    # -- writing --------------------------------------------------------------------
    def __enter__(self):
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)  # like `-o data/x.h5` in most tools
        except OSError as exc:
            self._fail(f"cannot create the output directory {str(directory)!r}: {exc.strerror}")
        if self.path.is_dir():
            self._fail("output path is a directory")
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        os.close(fd)
        self._tmp_path = Path(tmp)
        PENDING_TEMP_FILES.add(self._tmp_path)
        self._file = self._create_temp_file(self._tmp_path)
        for split in SPLITS:
            self._create_split(split)
        return self

    def _create_temp_file(self, tmp: Path) -> h5py.File:
        try:
            return h5py.File(tmp, "w")
        except OSError as e:
            tmp.unlink(missing_ok=True)
            PENDING_TEMP_FILES.discard(tmp)
            if is_lock_failure(e):
                self._fail(
                    f"cannot lock a new file in {str(tmp.parent)!r} ({e}): its file system (NFS, Lustre) may "
                    "not support locks; set HDF5_USE_FILE_LOCKING=FALSE (safe here: no one else opens a "
                    "file being written; docs/datasets.md)"
                )
            raise

    def _create_split(self, split: str):
        n = self.n_rows[split]
        self._open_file().create_dataset(
            dataset_path(split, "x"),
            shape=(n, *self.input_shape),
            dtype=self.x_dtype,
            **storage_options(self.x_dtype, self.input_shape, n),
        )
        y_dtype = label_dtype(self.n_classes)
        self._open_file().create_dataset(
            dataset_path(split, "y"), shape=(n,), dtype=y_dtype, **storage_options(y_dtype, (), n)
        )

    def append(self, split: str, x: np.ndarray, y: np.ndarray):
        """Write the next len(x) rows of `split`. x (k, *input_shape), y (k,)."""
        x, y = np.asarray(x), np.asarray(y)
        self.check_block(split, x, y)
        lo, hi = self._filled[split], self._filled[split] + len(x)
        file = self._open_file()
        file[dataset_path(split, "x")][lo:hi] = x
        file[dataset_path(split, "y")][lo:hi] = y
        self._digest.update(split, "x", x)
        self._digest.update(split, "y", y.astype(label_dtype(self.n_classes), copy=False))
        self._filled[split] = hi

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._finish()
        finally:
            if self._file is not None:
                self._file.close()
            if exc_type is not None and self._tmp_path is not None:
                self._tmp_path.unlink(missing_ok=True)
            PENDING_TEMP_FILES.discard(self._tmp_path)
        return False

    def _open_file(self) -> h5py.File:
        if self._file is None:
            raise RuntimeError("DatasetWriter used outside its `with` block")
        return self._file

    def _finish(self):
        tmp_path, file = self._tmp_path, self._open_file()
        assert tmp_path is not None  # set together with _file in __enter__
        try:
            for split in SPLITS:
                if self._filled[split] != self.n_rows[split]:
                    self._fail(f"{split}: only {self._filled[split]} of {self.n_rows[split]} rows were written")
            file.attrs.update(self.attrs)
            file.attrs.update(self.extra_attrs)
            file.attrs[CONTENT_DIGEST_ATTR] = self._digest.hexdigest()
            file.close()
            self._file = None
            # mkstemp makes the file 0600; give it the usual umask-based permissions.
            os.chmod(tmp_path, 0o666 & ~_current_umask())
            os.replace(tmp_path, self.path)
        except BaseException:
            if self._file is not None:
                self._file.close()
                self._file = None
            tmp_path.unlink(missing_ok=True)
            raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
