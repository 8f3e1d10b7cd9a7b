"""`inspect` and `validate`: human-readable reports on a dataset file (stdout)."""

import h5py
import numpy as np

from data_tools.common import describe
from data_tools.layout import guess_layout
from distbelief_mpi.data.hdf5 import DatasetInfo, open_for_reading, read_info, validate
from distbelief_mpi.data.schema import SPLITS, dataset_path
from distbelief_mpi.errors import DatasetError

MAX_LISTED_CLASSES = 20  # beyond this, class counts are summarised


def _filters(ds: h5py.Dataset) -> str:
    parts = [f"chunks={ds.chunks}"]
    if ds.compression:
        parts.append(f"{ds.compression}({ds.compression_opts})")
    if ds.shuffle:
        parts.append("shuffle")
    parts.append("fletcher32" if ds.fletcher32 else "NO fletcher32")
    return " ".join(parts)


def _class_counts(y: np.ndarray, n_classes: int) -> str:
    y = y.astype(np.int64)
    in_range = (y >= 0) & (y < n_classes)
    counts = np.bincount(y[in_range], minlength=n_classes)
    bad = "" if in_range.all() else f"; {int((~in_range).sum())} labels OUT OF RANGE"
    if n_classes <= MAX_LISTED_CLASSES:
        return " ".join(f"{c}:{n}" for c, n in enumerate(counts)) + bad
    return (
        f"min {counts.min()}, max {counts.max()}, mean {counts.mean():.1f}, "
        f"{int((counts == 0).sum())} of {n_classes} classes empty{bad}"
    )


def read_labels(f: h5py.File, path, split: str) -> np.ndarray:
    name = dataset_path(split, "y")
    try:
        return f[name][:]
    except OSError as e:
        raise DatasetError(path, f"{name}: cannot read labels ({e})") from None


def inspect_lines(path) -> list[str]:
    info = read_info(path)  # DatasetError first if the file is broken
    lines = [f"{path}: {describe(info)}", *layout_warnings(info), "attributes:"]
    with open_for_reading(path) as f:
        for key in sorted(f.attrs):
            value = f.attrs[key]
            shown = value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value
            lines.append(f"  {key} = {shown!r}")
        lines.append("datasets:")
        for split in SPLITS:
            for field in ("x", "y"):
                ds = f[dataset_path(split, field)]
                lines.append(f"  {ds.name}: shape {ds.shape} {ds.dtype}  {_filters(ds)}")
        lines.append("class counts:")
        for split in SPLITS:
            y = read_labels(f, path, split)
            lines.append(f"  {split}: {_class_counts(y, info.n_classes)}")
    return lines


def validate_lines(path) -> list[str]:
    info = validate(path)
    return [f"{path}: ok ({describe(info)}; all checksums verified)", *layout_warnings(info)]


def layout_warnings(info: DatasetInfo) -> list[str]:
    """A stored (C, H, W) that looks like a channels-last row, e.g. (28, 28, 1) from an older
    from-npz: valid, but a model would see 28 channels of 28x1."""
    shape = info.input_shape
    if len(shape) != 3 or guess_layout(shape) != "nhwc":
        return []
    c, h, w = shape
    return [
        f"warning: input_shape {shape} is read as {c} channels of {h}x{w}; if the rows are "
        f"(H, W, C) images, rebuild the file with from-npz / from-hdf5 --layout nhwc"
    ]
