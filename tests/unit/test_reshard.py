"""Re-slicing a checkpoint's shard files onto another layout (checkpoint/reshard.py), without
MPI: files written for one (shards, partitions, grid) are read back for another, and every new
shard's slice must equal the canonical vector put in the new order, element for element."""

import h5py
import numpy as np
import pytest

from distbelief_mpi.checkpoint import reshard
from distbelief_mpi.checkpoint.reshard import Copy, SavedVector, plan_copies, read_slice
from distbelief_mpi.config import parse_job
from distbelief_mpi.errors import CheckpointError
from distbelief_mpi.layout import plan_layout
from distbelief_mpi.model.network import build_network
from distbelief_mpi.model.partition import job_split, partition_offsets
from distbelief_mpi.model.spec import LayerSpec

LAYERS = (
    LayerSpec("local", filters=3, patch=3, stride=1, activation="relu"),
    LayerSpec("maxpool", size=2, stride=2),
    LayerSpec("dense", units=7, activation="tanh"),
)
NETWORK = build_network(LAYERS, (1, 10, 9), 4)


def layout_of(shards: int, parts: int, grid: str = "rows"):
    """(the job's parameter order or None, its shard ranges) for a Downpour layout."""
    topology = {"shards": shards, "replicas": 1, "partitions_per_replica": parts, "partition_grid": grid}
    spec = parse_job(
        {"data": {"path": "d.h5"}, "run": {"steps": 1}, "optimizer": {"algorithm": "downpour"}, "topology": topology}
    )
    layout = plan_layout(shards + parts, spec, NETWORK.n_params, partition_offsets(NETWORK, spec))
    order = job_split(NETWORK, spec.topology)[1] if parts > 1 else None
    return order, layout.shard_ranges


def write_layout(tmp_path, canonical: np.ndarray, shards: int, parts: int, grid: str = "rows") -> SavedVector:
    """The canonical vector as shard files of that layout: `params` (L,) and a 2-row `s` (2, L)."""
    order, ranges = layout_of(shards, parts, grid)
    held = canonical if order is None else order.from_canonical(canonical)
    paths = []
    for shard_id, (start, stop) in enumerate(ranges):
        path = tmp_path / f"{shards}-{parts}-{grid}-{shard_id}.h5"
        with h5py.File(path, "w") as handle:
            handle["params"] = held[start:stop]
            handle["s"] = np.stack([held[start:stop], -held[start:stop]])
        paths.append(path)
    return SavedVector(tuple(paths), ranges, order)


LAYOUTS = [(1, 1, "rows"), (3, 1, "rows"), (2, 2, "rows"), (1, 3, "rows"), (5, 4, "2x2"), (3, 4, "rows")]


@pytest.mark.parametrize("old", LAYOUTS)
@pytest.mark.parametrize("new", LAYOUTS)
def test_every_new_slice_equals_the_canonical_vector_in_the_new_order(tmp_path, old, new):
    canonical = np.arange(NETWORK.n_params, dtype=np.float32) * 0.5 + 1
    saved = write_layout(tmp_path, canonical, *old)
    order, ranges = layout_of(*new)
    wanted = canonical if order is None else order.from_canonical(canonical)
    for start, stop in ranges:
        copies = plan_copies(saved, order, start, stop)
        assert read_slice(saved, copies, "params", stop - start, np.float32).tobytes() == wanted[start:stop].tobytes()
        row = read_slice(saved, copies, "s", stop - start, np.float64, row=1)
        assert np.array_equal(row, -wanted[start:stop].astype(np.float64))


def test_the_same_order_reads_positions_straight_across_the_cuts(tmp_path):
    saved = write_layout(tmp_path, np.zeros(NETWORK.n_params, np.float32), 3, 1)
    (a, b), (c, _) = saved.ranges[0], saved.ranges[1]
    assert plan_copies(saved, None, 5, c + 7) == [Copy(0, 5, 0, b - 5), Copy(1, 0, b - 5, 7)]
    assert a == 0


def test_windows_bound_what_is_read_at_once(tmp_path, monkeypatch):
    """With a window of 16 elements, the slices still come out exactly (many windows, copies
    longer than a window read in parts)."""
    monkeypatch.setattr(reshard, "READ_WINDOW", 16)
    canonical = np.arange(NETWORK.n_params, dtype=np.float32)
    saved = write_layout(tmp_path, canonical, 2, 2)
    order, ranges = layout_of(1, 3)
    start, stop = ranges[0]
    copies = plan_copies(saved, order, start, stop)
    assert (
        read_slice(saved, copies, "params", stop - start, np.float32).tobytes()
        == order.from_canonical(canonical)[start:stop].tobytes()
    )


def test_files_that_do_not_cover_the_slice_are_refused(tmp_path):
    saved = write_layout(tmp_path, np.zeros(NETWORK.n_params, np.float32), 2, 1)
    short = SavedVector(saved.paths[:1], saved.ranges[:1], None)
    with pytest.raises(CheckpointError, match="do not cover"):
        plan_copies(short, None, 0, NETWORK.n_params)


def test_a_missing_dataset_names_the_file(tmp_path):
    saved = write_layout(tmp_path, np.zeros(NETWORK.n_params, np.float32), 1, 1)
    copies = plan_copies(saved, None, 0, 10)
    with pytest.raises(CheckpointError, match=r"1-1-rows-0\.h5: cannot read 'accumulator'"):
        read_slice(saved, copies, "accumulator", 10, np.float32)
