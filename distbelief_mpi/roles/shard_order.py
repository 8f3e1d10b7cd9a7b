"""The order in which the shards hold the parameters: canonical for unpartitioned replicas,
partition-major when partitioned (model/partition.py), so each partition's block is contiguous.
The blocks follow the job's topology.partition_grid (whole rows, or rows x columns).
"""

import numpy as np

from ..job import Job
from ..model.partition import ParamOrder, initial_slice, job_grid, job_split


def parameter_order(job: Job) -> ParamOrder | None:
    """The partition-major order of the job's parameters, or None for unpartitioned replicas."""
    parts = job.spec.topology.partitions_per_replica
    return None if parts == 1 else job_split(job.network, job.spec.topology)[1]


def initial_params(job: Job, start: int, stop: int) -> np.ndarray:
    """Elements [start, stop) of the run's initial parameters in the order the shards hold
    them: a shard draws its own slice only."""
    topology = job.spec.topology
    grid = job_grid(job.network, topology) if topology.partitions_per_replica > 1 else None
    return initial_slice(job.network, topology.partitions_per_replica, job.spec.run.seed, start, stop, grid)
