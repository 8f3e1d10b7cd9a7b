"""The order in which the shards hold the parameters: canonical for unpartitioned replicas,
partition-major when partitioned (model/partition.py), so each partition's block is contiguous.
"""

import numpy as np

from ..model.partition import ParamOrder, split_model


def parameter_order(job) -> ParamOrder | None:
    """The partition-major order of the job's parameters, or None for unpartitioned replicas."""
    parts = job.spec.topology.partitions_per_replica
    return None if parts == 1 else split_model(job.network, parts)[1]


def initial_params(job) -> np.ndarray:
    """The run's initial parameters in the order the shards hold them (partition-major when partitioned)."""
    initial = job.network.init_params(job.spec.run.seed)
    order = parameter_order(job)
    return initial if order is None else order.from_canonical(initial)
