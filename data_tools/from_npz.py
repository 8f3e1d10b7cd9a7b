"""`from-npz`: convert a user's .npz (x_train, y_train, x_test, y_test) to schema 1.

x layouts: (n, D) vectors -> input_shape (D,); (n, H, W) images -> (1, H, W);
(n, C, H, W) images must already be channels-first (NCHW) and are kept as is.
x is stored as uint8 when both x arrays are integers in 0..255, else as float32.
"""

import zipfile
from pathlib import Path

import numpy as np

from data_tools import CREATED_BY
from distbelief_mpi.data.hdf5 import write_dataset
from distbelief_mpi.errors import DatasetError

ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(path, "file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in ARRAYS if name not in npz.files]
            if missing:
                raise DatasetError(
                    path, f"missing array(s) {', '.join(missing)} (found: {', '.join(npz.files) or 'none'})"
                )
            return {name: npz[name] for name in ARRAYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DatasetError(path, f"not a readable .npz file: {e}") from None


def input_shape_of(path: Path, x_train: np.ndarray, x_test: np.ndarray) -> tuple:
    if x_train.ndim not in (2, 3, 4):
        raise DatasetError(path, f"x_train has shape {x_train.shape}; expected (n, D), (n, H, W) or (n, C, H, W)")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise DatasetError(path, f"x_test rows have shape {x_test.shape[1:]} but x_train rows have {x_train.shape[1:]}")
    row = x_train.shape[1:]
    return (1, *row) if len(row) == 2 else row


def check_labels(path: Path, arrays: dict) -> None:
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if y.ndim != 1:
            raise DatasetError(path, f"y_{split} has shape {y.shape}, expected (n,)")
        if len(y) != len(x):
            raise DatasetError(path, f"x_{split} has {len(x)} rows but y_{split} has {len(y)}")
        if len(y) == 0:
            raise DatasetError(path, f"x_{split} and y_{split} are empty")
        if not np.issubdtype(y.dtype, np.integer):
            raise DatasetError(path, f"y_{split} has dtype {y.dtype}; labels must be integers")
        if y.min() < 0:
            raise DatasetError(path, f"y_{split} contains negative label {int(y.min())}")


def storage_x(path: Path, x_train: np.ndarray, x_test: np.ndarray):
    """Both x arrays as uint8 if they are integers in 0..255, else float32."""
    xs = (x_train, x_test)
    if all(np.issubdtype(x.dtype, np.integer) and (x.size == 0 or 0 <= x.min() <= x.max() <= 255) for x in xs):
        return tuple(x.astype(np.uint8, copy=False) for x in xs)
    for name, x in zip(("x_train", "x_test"), xs):
        if x.dtype.kind not in "iufb":
            raise DatasetError(path, f"{name} has dtype {x.dtype}; expected numbers")
    converted = tuple(x.astype(np.float32, copy=False) for x in xs)
    for name, x in zip(("x_train", "x_test"), converted):
        if not np.isfinite(x).all():
            raise DatasetError(path, f"{name} contains NaN or infinite values (as float32)")
    return converted


def build_from_npz(
    npz_path, out_path, name: str | None = None, n_classes: int | None = None, x_scale: float = 1.0, log=None
) -> None:
    npz_path = Path(npz_path)
    arrays = load_npz(npz_path)
    check_labels(npz_path, arrays)
    shape = input_shape_of(npz_path, arrays["x_train"], arrays["x_test"])
    x_train, x_test = storage_x(npz_path, arrays["x_train"], arrays["x_test"])
    max_label = int(max(arrays["y_train"].max(), arrays["y_test"].max()))
    if n_classes is None:
        n_classes = max_label + 1
    elif max_label >= n_classes:
        raise DatasetError(npz_path, f"label {max_label} does not fit --n-classes {n_classes}")
    if log and x_train.dtype == np.uint8 and x_scale == 1.0:
        log(
            "note: x is stored as uint8 with x_scale 1.0; pass --x-scale 0.00392156862745098 "
            "(1/255) if these are 0..255 pixels"
        )
    write_dataset(
        out_path,
        name=name or npz_path.stem,
        source=f"converted from {npz_path.name}",
        n_classes=n_classes,
        input_shape=shape,
        x_train=x_train.reshape(len(x_train), *shape),
        y_train=arrays["y_train"],
        x_test=x_test.reshape(len(x_test), *shape),
        y_test=arrays["y_test"],
        x_scale=x_scale,
        synthetic=False,
        created_by=CREATED_BY,
    )
