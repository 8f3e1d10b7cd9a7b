"""Crash-safe file output: write a temporary file beside the target, fsync, rename.

Readers see the old file or the new one, never half of one; a failed write leaves the
old file untouched and removes its temporary.
"""

import contextlib
import errno
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


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


# Free bytes a new HDF5 file's metadata may need before its data space is reserved.
METADATA_MARGIN = 64 << 10  # a few datasets and attributes take a few kB


@dataclass(frozen=True)
class DatasetPlan:
    """One dataset of an HDF5 file written by hdf5_stream: contiguous, row-major."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # e.g. "<f4"


class Hdf5Writer:
    """Writes the bytes of hdf5_stream's datasets straight into the file (plain pwrite)."""

    def __init__(self, fd: int, offsets: dict[str, int | None], plans: dict[str, DatasetPlan]):
        self.fd, self.offsets, self.plans = fd, offsets, plans

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        """Elements [start, start + values.size) of dataset `name` (flat, row-major) <- values."""
        plan, offset = self.plans[name], self.offsets[name]
        values = np.ascontiguousarray(values, dtype=plan.dtype)
        if values.size == 0:
            return
        assert offset is not None and start + values.size <= math.prod(plan.shape), (name, start, values.size)
        view, position = values.reshape(-1).view(np.uint8).data, offset + start * values.itemsize
        while view:  # pwrite may write less than asked
            written = os.pwrite(self.fd, view, position)
            view, position = view[written:], position + written


@contextlib.contextmanager
def hdf5_stream(
    path: Path, plans: list[DatasetPlan], attrs: dict, groups: dict[str, dict] | None = None
) -> Iterator[Hdf5Writer]:
    """Create an HDF5 file of contiguous datasets and stream their data into it, then fsync
    and rename: nothing of the data's size is built in memory, a crash leaves the old file.

    HDF5 itself writes the small metadata only (and crashes the process when a full disk
    fails its own writes, measured with h5py 3 on a full tmpfs): so the free space for it
    is checked first, the data space is reserved (posix_fallocate) before any data is
    written, and the data goes in with pwrite, whose failure is a plain OSError. A plan's name
    may hold groups ("layers/0/W"); groups: more groups to create, each with its attributes."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = None
    try:
        _require_free(path.parent, METADATA_MARGIN)
        offsets = _metadata_written(tmp, plans, attrs, groups or {})
        fd = os.open(tmp, os.O_RDWR)
        _reserve(fd, _data_end(offsets, plans))
        yield Hdf5Writer(fd, offsets, {plan.name: plan for plan in plans})
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.replace(tmp, path)
    finally:
        if fd is not None:
            os.close(fd)
        tmp.unlink(missing_ok=True)


def write_hdf5_arrays(path: Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    """hdf5_stream for arrays already in memory (each written as it is, no copy)."""
    plans = [DatasetPlan(name, tuple(array.shape), array.dtype.str) for name, array in arrays.items()]
    with hdf5_stream(path, plans, attrs) as out:
        for name, array in arrays.items():
            out.write(name, 0, array)


def _metadata_written(tmp: Path, plans: list[DatasetPlan], attrs: dict, groups: dict) -> dict[str, int | None]:
    """_create_layout, with a full disk reported as the OSError(ENOSPC) it is: another writer
    (a second shard on the same file system) may take the space between the free-space check
    and HDF5's metadata writes, and h5py reports that from close() as a RuntimeError."""
    try:
        return _create_layout(tmp, plans, attrs, groups)
    except (RuntimeError, OSError) as exc:
        if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp)) from None
        raise


def _create_layout(tmp: Path, plans: list[DatasetPlan], attrs: dict, groups: dict) -> dict[str, int | None]:
    """HDF5 writes the metadata of `plans` (in their groups) with their data space allocated but
    unwritten (a sparse file); returns each dataset's byte offset (None for an empty one)."""
    import h5py

    offsets: dict[str, int | None] = {}
    with h5py.File(tmp, "w") as handle:
        for name, group_attrs in groups.items():
            handle.require_group(name).attrs.update(group_attrs)
        for plan in plans:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # space (and its offset) now
            dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # ... without writing it
            space = h5py.h5s.create_simple(plan.shape)
            group, _, name = plan.name.rpartition("/")
            parent = handle.require_group(group) if group else handle
            dataset = h5py.h5d.create(
                parent.id, name.encode(), h5py.h5t.py_create(np.dtype(plan.dtype)), space, dcpl=dcpl
            )
            offsets[plan.name] = dataset.get_offset()
        handle.attrs.update(attrs)
    return offsets


def _data_end(offsets: dict[str, int | None], plans: list[DatasetPlan]) -> int:
    """The file's size once every dataset is written."""
    ends = [
        offset + math.prod(plan.shape) * np.dtype(plan.dtype).itemsize
        for plan in plans
        if (offset := offsets[plan.name]) is not None
    ]
    return max(ends, default=0)


def _require_free(directory: Path, needed: int) -> None:
    stat = os.statvfs(directory)
    if stat.f_bavail * stat.f_frsize < needed:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))


def _reserve(fd: int, size: int) -> None:
    """Allocate the file's blocks now: a full disk fails here, before any data is written.
    File systems without fallocate (some network ones) skip this: pwrite then reports it."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
