"""Where a shard's slice comes from when it resumes: its own file of the checkpoint when the
shard cuts and the parameter order stayed, else re-sliced from the checkpoint's files
(checkpoint/reshard.py) when shards, replicas or partitions changed. Either way the shard reads
its own slice only.
"""

import dataclasses
import logging
from pathlib import Path

import h5py
import numpy as np

from ..checkpoint.reshard import SavedVector, plan_copies, read_slice
from ..checkpoint.sandblaster_shard import load_vectors
from ..checkpoint.shard_files import load_shard, shard_file_name
from ..errors import CheckpointError
from ..job import Job
from ..model.partition import job_split
from .shard_order import parameter_order

log = logging.getLogger(__name__)


def downpour_state(job: Job, shard_id: int, start: int, stop: int) -> dict:
    """{params, accumulator (L,) float32, version, stats (None: start the counters afresh)}."""
    resume = job.resume
    assert resume is not None
    if resume.same_slices:
        state = load_shard(resume.directory / shard_file_name(shard_id), shard_id, start, stop)
        return {**state, "stats": None if resume.changed else state["stats"]}
    saved = saved_vector(job)
    copies = plan_copies(saved, parameter_order(job), start, stop)
    _check_cuts(saved, {c.file for c in copies})
    state = {key: read_slice(saved, copies, key, stop - start, np.float32) for key in ("params", "accumulator")}
    if not np.all(np.isfinite(state["params"])):
        raise CheckpointError(f"{resume.directory}: parameters hold NaN or Inf")
    # Versions count a shard's updates; the new shard continues from the furthest old one, so
    # staleness (versions behind) never reads negative.
    version = max(int(v) for v in resume.manifest["shard_versions"])
    log.info("re-sliced [%d, %d) from %d file(s) of %s", start, stop, len({c.file for c in copies}), resume.directory)
    return {**state, "version": version, "stats": None}


def sandblaster_state(job: Job, shard_id: int, start: int, stop: int) -> dict:
    """ShardVectors.state() for [start, stop): x, g (L,) and the history pairs s, y (k rows of
    (L,)) float64 with their ids, from this shard's file or re-sliced from the checkpoint's."""
    resume = job.resume
    assert resume is not None
    if resume.same_slices:
        return load_vectors(resume.directory / shard_file_name(shard_id), shard_id, start, stop)
    saved = saved_vector(job)
    copies = plan_copies(saved, parameter_order(job), start, stop)
    pids = _check_cuts(saved, {c.file for c in copies})
    length = stop - start
    state: dict = {key: read_slice(saved, copies, key, length, np.float64) for key in ("x", "g")}
    for key in ("s", "y"):
        state[key] = [read_slice(saved, copies, key, length, np.float64, row) for row in range(len(pids))]
    if not all(np.all(np.isfinite(state[key])) for key in ("x", "g")):
        raise CheckpointError(f"{resume.directory}: x or g holds NaN or Inf")
    return {**state, "pids": pids}


def saved_vector(job: Job) -> SavedVector:
    """Where the resumed checkpoint's files hold the vector: their ranges in the order of the
    layout that wrote them (its partitions_per_replica and partition_grid)."""
    resume = job.resume
    assert resume is not None
    ranges = tuple((int(a), int(b)) for a, b in resume.manifest["layout"]["shard_ranges"])
    paths = tuple(resume.directory / shard_file_name(s) for s in range(len(ranges)))
    saved = resume.saved_topology
    order = None
    if saved["partitions_per_replica"] > 1:
        topology = dataclasses.replace(
            job.spec.topology,
            partitions_per_replica=saved["partitions_per_replica"],
            partition_grid=saved["partition_grid"],
        )
        order = job_split(job.network, topology)[1]
    return SavedVector(paths, ranges, order)


def _check_cuts(saved: SavedVector, files: set[int]) -> list[int]:
    """Each file read holds the range the manifest gives it, and all agree on the history pair
    ids (Sandblaster; [] for Downpour). Returns those ids."""
    pids_seen = set()
    for index in sorted(files):
        path, expected = saved.paths[index], saved.ranges[index]
        try:
            with h5py.File(path, "r") as handle:
                held = (int(handle.attrs["start"]), int(handle.attrs["stop"]))
                pids_seen.add(tuple(int(p) for p in handle.attrs.get("pids", ())))
        except (OSError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot read the shard file ({exc})") from None
        if held != expected:
            raise CheckpointError(f"{path}: holds {held}, the manifest says {expected}")
    if len(pids_seen) > 1:
        raise CheckpointError(f"{Path(saved.paths[0]).parent}: the shard files hold different history pairs")
    return list(next(iter(pids_seen), ()))
