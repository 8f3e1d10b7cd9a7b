"""The order in which the shards hold the parameters: canonical for unpartitioned replicas,
partition-major when partitioned (model/partition.py), so each partition's block is contiguous.
The blocks follow the job's topology.partition_grid (whole rows, or rows x columns).
"""

from pathlib import Path

import numpy as np

from ..checkpoint.init_from import saved_params
from ..checkpoint.reshard import plan_copies, read_slice
from ..errors import CheckpointError
from ..job import Job
from ..model.partition import ParamOrder, initial_slice, job_grid, job_split


def parameter_order(job: Job) -> ParamOrder | None:
    """The partition-major order of the job's parameters, or None for unpartitioned replicas."""
    parts = job.spec.topology.partitions_per_replica
    return None if parts == 1 else job_split(job.network, job.spec.topology)[1]


def initial_params(job: Job, start: int, stop: int) -> np.ndarray:
    """Elements [start, stop) of the run's initial parameters in the order the shards hold
    them: a shard draws (or, with --init-from, reads) its own slice only."""
    if job.init_from is not None:
        return _slice_of_file(job, job.init_from, start, stop)
    topology = job.spec.topology
    grid = job_grid(job.network, topology) if topology.partitions_per_replica > 1 else None
    return initial_slice(job.network, topology.partitions_per_replica, job.spec.run.seed, start, stop, grid)


def _slice_of_file(job: Job, path: Path, start: int, stop: int) -> np.ndarray:
    """Elements [start, stop) of a params.h5 (canonical order) in the shards' order."""
    saved = saved_params(path, job.network.n_params)
    values = read_slice(
        saved, plan_copies(saved, parameter_order(job), start, stop), "params", stop - start, np.float32
    )
    if not np.all(np.isfinite(values)):
        raise CheckpointError(f"{path}: /params holds NaN or Inf values")
    return values
