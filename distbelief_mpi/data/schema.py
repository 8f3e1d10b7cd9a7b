"""Dataset file schema, version 1: names, attributes and storage options (see docs/datasets.md).

Kept apart from the reader and the writer so both agree on one definition.
"""

import hashlib

import numpy as np

SCHEMA_VERSION = 1
SPLITS = ("train", "test")
X_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))

# Root attribute -> Python type it must convert to. `input_shape` is an int array.
REQUIRED_ATTRS = {
    "schema_version": int,
    "name": str,
    "source": str,
    "n_classes": int,
    "input_shape": tuple,
    "x_scale": float,
    "synthetic": bool,
    "created_by": str,
}

# Aim for ~1 MiB chunks: large enough that per-chunk overhead (checksum, filter call,
# B-tree lookup) is negligible, small enough that a read_split slice wastes little.
CHUNK_TARGET_BYTES = 1 << 20
GZIP_LEVEL = 1  # level 1 inflates as fast as level 9 and deflates far faster


def dataset_path(split: str, field: str) -> str:
    """'/train/x' etc."""
    return f"/{split}/{field}"


def chunk_rows(row_bytes: int, n_rows: int) -> int:
    """Rows per chunk so one chunk is about CHUNK_TARGET_BYTES, never more than n_rows."""
    return max(1, min(n_rows, CHUNK_TARGET_BYTES // max(1, row_bytes)))


def storage_options(dtype: np.dtype, row_shape: tuple, n_rows: int) -> dict:
    """h5py create_dataset keywords: always chunked + fletcher32.

    Integer data (uint8 pixels, labels) gets gzip level 1: pixels shrink ~2x and inflate
    at hundreds of MB/s. float32 data is left uncompressed: noise-like floats barely
    compress, so gzip would only slow reading and writing.
    """
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    opts = {"chunks": (chunk_rows(row_bytes, n_rows), *row_shape), "fletcher32": True}
    if np.issubdtype(dtype, np.integer):
        opts.update(compression="gzip", compression_opts=GZIP_LEVEL)
    return opts


# A classifier needs two classes at least; the cap keeps labels in int32 and per-class
# tables (counts, the output layer) of sane size.
MIN_CLASSES, MAX_CLASSES = 2, 1 << 24


def class_count_problem(n_classes: int) -> str | None:
    if not MIN_CLASSES <= n_classes <= MAX_CLASSES:
        return f"n_classes {n_classes} must be in [{MIN_CLASSES}, {MAX_CLASSES}]"
    return None


def label_dtype(n_classes: int) -> np.dtype:
    """Smallest unsigned dtype holding labels 0..n_classes-1 (uint8, uint16 or int32)."""
    if n_classes <= 1 << 8:
        return np.dtype(np.uint8)
    if n_classes <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


# Root attribute (optional: files written before it have none): the SHA-256 of the stored
# contents, ContentDigest below. A model file records it as the identity of its training data.
CONTENT_DIGEST_ATTR = "content_sha256"


class ContentDigest:
    """SHA-256 of a dataset's stored arrays, fed in row order: one digest per (split, field) over
    the rows' bytes as stored, combined in SPLITS x (x, y) order. The writer feeds its blocks as
    it appends them, `validate` the blocks it reads, so the whole file is never held."""

    def __init__(self):
        self._parts = {(split, field): hashlib.sha256() for split in SPLITS for field in ("x", "y")}

    def update(self, split: str, field: str, rows: np.ndarray) -> None:
        self._parts[(split, field)].update(np.ascontiguousarray(rows).tobytes())

    def hexdigest(self) -> str:
        lines = "".join(f"{split}/{field}={h.hexdigest()}\n" for (split, field), h in self._parts.items())
        return hashlib.sha256(lines.encode()).hexdigest()
