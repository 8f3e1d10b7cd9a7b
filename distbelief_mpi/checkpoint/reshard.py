"""Reading a shard's slice out of files written by another layout (resume onto another
topology, --init-from).

A checkpoint holds, per shard, elements [start, stop) of the parameter vector in the order of
the layout that wrote it: canonical for unpartitioned replicas, partition-major for
partitioned ones (model/partition.ParamOrder, which depends on the partition count and grid).
A shard of the new layout needs elements [a, b) of its own order. Each of its contiguous
pieces is traced through its canonical index to where the old layout put it, giving a list of
copies (old file, position there, position in the new slice, length). The copies are then
read file by file in windows of at most READ_WINDOW elements: no rank ever holds more than its
own slice and one window, whatever the sizes of the old and new layouts.
"""

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from ..errors import CheckpointError
from ..model.partition import ParamOrder

# Elements read from an old file at once: 16 MB of float32, 32 MB of float64.
READ_WINDOW = 1 << 22


class Copy(NamedTuple):
    """`length` elements from position `source` of old file `file` to position `target` of the new slice."""

    file: int
    source: int
    target: int
    length: int


@dataclass(frozen=True)
class SavedVector:
    """Where a vector's elements lie in the files of the layout that wrote them."""

    paths: tuple[Path, ...]  # one per old shard (one for params.h5)
    ranges: tuple[tuple[int, int], ...]  # [start, stop) of each file, in the old order
    order: ParamOrder | None  # the old order; None: canonical


def plan_copies(saved: SavedVector, order: ParamOrder | None, start: int, stop: int) -> list[Copy]:
    """The copies that fill elements [start, stop) of `order` (None: canonical) from `saved`, in
    target order, adjacent ones merged."""
    if saved.order == order:  # the same order: positions carry over, only the files' cuts differ
        spans: Iterator[tuple[int, int, int]] = iter([(start, 0, stop - start)])
    else:
        spans = _old_positions(saved.order, _canonical_pieces(order, start, stop))
    copies: list[Copy] = []
    starts = [lo for lo, _ in saved.ranges]
    for old_position, target, length in spans:
        for copy in _split_by_file(saved.ranges, starts, old_position, target, length):
            copies = _append_merged(copies, copy)
    if sum(c.length for c in copies) != stop - start:
        raise CheckpointError(f"the saved files do not cover elements [{start}, {stop}) of the new layout")
    return copies


def read_slice(saved: SavedVector, copies: Sequence[Copy], key: str, length: int, dtype, row: int | None = None):
    """Dataset `key` (or its row `row`, for (k, L) datasets) of the old files, gathered into a
    new (length,) array of `dtype` by `copies` (plan_copies)."""
    out = np.empty(length, dtype)
    by_file: dict[int, list[Copy]] = {}
    for copy in copies:
        by_file.setdefault(copy.file, []).append(copy)
    for file_index, mine in sorted(by_file.items()):  # only the files this slice touches are opened
        path = saved.paths[file_index]
        mine.sort(key=lambda c: c.source)
        try:
            with h5py.File(path, "r") as handle:
                dataset = handle[key]
                for window in _windows(mine):
                    _gather(dataset, window, out, row)
        except (OSError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot read {key!r} ({exc})") from None
    return out


def _canonical_pieces(order: ParamOrder | None, start: int, stop: int) -> list[tuple[int, int, int]]:
    """(canonical start, position in the slice, length) of the slice's contiguous pieces."""
    if order is None:
        return [(start, 0, stop - start)]
    return [(canonical, position - start, length) for position, canonical, length in order.segments(start, stop)]


def _old_positions(old: ParamOrder | None, pieces: list[tuple[int, int, int]]) -> Iterator[tuple[int, int, int]]:
    """(old position, position in the slice, length) for the canonical pieces (canonical, target,
    length): each piece cut where the old order's segments are."""
    if old is None:
        yield from pieces
        return
    # The old order's segments sorted by canonical index: (canonical start, old position, length).
    table = np.array(sorted((c, p, n) for p, c, n in old.segments(0, old.offsets[-1])), np.int64).reshape(-1, 3)
    for canonical, target, length in pieces:
        index = max(0, int(np.searchsorted(table[:, 0], canonical, side="right")) - 1)
        end = canonical + length
        while canonical < end:
            seg_canonical, seg_position, seg_length = (int(v) for v in table[index])
            take = min(end, seg_canonical + seg_length) - canonical
            yield seg_position + canonical - seg_canonical, target, take
            canonical, target, index = canonical + take, target + take, index + 1


def _split_by_file(ranges, starts: list[int], old_position: int, target: int, length: int) -> Iterator[Copy]:
    """The piece cut where the old files' ranges end (ranges contiguous and in order, starts
    their first elements: the files a piece touches are found by bisection)."""
    file_index = max(0, bisect.bisect_right(starts, old_position) - 1)
    end = old_position + length
    while old_position < end and file_index < len(ranges):
        lo, hi = ranges[file_index]
        take = min(end, hi) - old_position
        if take > 0:
            yield Copy(file_index, old_position - lo, target, take)
            old_position, target = old_position + take, target + take
        file_index += 1


def _append_merged(copies: list[Copy], copy: Copy) -> list[Copy]:
    if copies:
        last = copies[-1]
        if last.file == copy.file and (last.source, last.target) == (
            copy.source - last.length,
            copy.target - last.length,
        ):
            copies[-1] = last._replace(length=last.length + copy.length)
            return copies
    copies.append(copy)
    return copies


def _windows(copies: list[Copy]) -> Iterator[list[Copy]]:
    """Copies (sorted by source) grouped so each group's span in the file is at most READ_WINDOW
    (a longer copy is a window of its own, read in parts by _gather)."""
    group: list[Copy] = []
    for copy in copies:
        if group and copy.source + copy.length - group[0].source > READ_WINDOW:
            yield group
            group = []
        group.append(copy)
    if group:
        yield group


def _gather(dataset, window: list[Copy], out: np.ndarray, row: int | None) -> None:
    """Read the window's span of the file once (in READ_WINDOW parts) and place each copy."""
    lo, hi = window[0].source, max(c.source + c.length for c in window)
    for part in range(lo, hi, READ_WINDOW):
        part_hi = min(hi, part + READ_WINDOW)
        values = dataset[part:part_hi] if row is None else dataset[row, part:part_hi]
        for copy in window:
            a, b = max(copy.source, part), min(copy.source + copy.length, part_hi)
            if a < b:
                out[copy.target + a - copy.source : copy.target + b - copy.source] = values[a - part : b - part]
