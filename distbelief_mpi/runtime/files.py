"""Crash-safe file output: write a temporary file beside the target, fsync, rename.

Readers see the old file or the new one, never half of one; a failed write leaves the
old file untouched and removes its temporary.
"""

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path: Path):
    """Yields a temporary path to write; on success it is fsynced and renamed to `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_hdf5_atomic(path: Path, fill) -> None:
    """Build an HDF5 file in memory with fill(h5py.File), then write its bytes atomically.
    HDF5 never touches the disk itself, so a full disk is a plain OSError from one write,
    not a half-flushed HDF5 file (whose clean-up can crash the process)."""
    import io

    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        fill(handle)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as out:
            out.write(buffer.getbuffer())
