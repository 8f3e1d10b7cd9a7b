"""The end of a Downpour run: evaluate the final parameters and write params.h5, with no rank
holding more than it owns.

Both happen after every replica has reported (every push is applied, the shards are idle)
and before the shards are told to stop. Replica 0 evaluates: unpartitioned, its lead fetches
the whole model (it trained on the whole model, so it holds nothing new); partitioned, its
partitions fetch their own blocks and evaluate together, model-parallel. The lead then
streams each shard's slice into params.h5 a chunk at a time, each piece written where it
belongs in the canonical order (model/partition.ParamOrder.segments).
"""

import numpy as np

from ...checkpoint.params_file import PARAMS_CHUNK, params_stream
from ...comm.param_server import ParamServerWindows
from ...comm.replica_endpoint import ReplicaEndpoint
from ...job import Job
from ...runtime import watchdog
from ..partitioned_replica import ShardSubset, own_shards, partition_network
from ..shard_order import parameter_order


class BlockEvaluator:
    """(x, y) -> (loss, accuracy) of the shards' current parameters of this rank's block, with
    this rank's network (a partition's: every partition of the replica calls it together)."""

    def __init__(self, network, endpoint: ShardSubset, local_ranges: list[tuple[int, int]]):
        self.network, self.endpoint, self.ranges = network, endpoint, local_ranges
        self.params = np.empty(network.n_params, np.float32)  # (block,) a copy of the shards' values

    def __call__(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        for index, (start, stop) in enumerate(self.ranges):
            self.endpoint.fetch(index, self.params[start:stop])
        return self.network.evaluate(self.params, x, y, on_batch=watchdog.beat)


def final_evaluation(job: Job, windows: ParamServerWindows, partners_comm, test_set) -> tuple[float, float]:
    """(test loss, test accuracy) of the final parameters, on replica 0's ranks (all of its
    partitions call it; each gets the same figures)."""
    if partners_comm is None:
        network, shard_ids, ranges = job.network, list(range(len(job.layout.shard_ranges))), job.layout.shard_ranges
    else:
        network = partition_network(job, partners_comm)
        shard_ids, ranges = own_shards(job)
    endpoint = ShardSubset(ReplicaEndpoint(windows, job.role.replica_id), shard_ids)
    return BlockEvaluator(network, endpoint, list(ranges))(*test_set)


def write_final_params(job: Job, windows: ParamServerWindows, step: int) -> None:
    """RUN_DIR/params.h5 from the shards' slices, PARAMS_CHUNK floats at a time (the lead only)."""
    endpoint = ReplicaEndpoint(windows, job.role.replica_id)
    chunk = np.empty(min(PARAMS_CHUNK, max((b - a for a, b in job.layout.shard_ranges), default=0)), np.float32)
    path, n_params = job.run_dir / "params.h5", job.network.n_params
    with params_stream(path, n_params, {"step": step}, parameter_order(job)) as write:
        for shard_id, (start, stop) in enumerate(job.layout.shard_ranges):
            for lo in range(start, stop, len(chunk)):
                piece = chunk[: min(len(chunk), stop - lo)]
                endpoint.fetch(shard_id, piece, lo - start)
                write(lo, piece)
                watchdog.beat()  # a big model's file takes a while; this rank is not hung
