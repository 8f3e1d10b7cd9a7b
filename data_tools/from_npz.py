"""`from-npz`: convert a user's .npz (x_train, y_train, x_test, y_test) to schema 1.

x layouts: (n, D) vectors -> input_shape (D,); (n, H, W) images -> (1, H, W); 4-D images
are NCHW or NHWC (data_tools/layout.py: --layout, else guessed and logged), stored NCHW.
x is stored as uint8 when both x arrays are integers in 0..255, else as float32.
"""

import zipfile
from pathlib import Path

import numpy as np

from data_tools.convert import SourceSplit, convert
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


def build_from_npz(
    npz_path,
    out_path,
    name: str | None = None,
    n_classes: int | None = None,
    x_scale: float = 1.0,
    layout: str | None = None,
    log=None,
) -> None:
    """layout: "nchw" | "nhwc" for 4-D x, or None to guess (and log the guess)."""
    npz_path = Path(npz_path)
    arrays = load_npz(npz_path)  # an .npz is compressed or zipped: it loads whole
    splits = {
        split: SourceSplit(arrays[f"x_{split}"], arrays[f"y_{split}"], f"x_{split}", f"y_{split}")
        for split in ("train", "test")
    }
    convert(
        npz_path,
        out_path,
        splits,
        name=name or npz_path.stem,
        source_text=f"converted from {npz_path.name}",
        layout=layout,
        n_classes=n_classes,
        x_scale=x_scale,
        log=log,
    )
