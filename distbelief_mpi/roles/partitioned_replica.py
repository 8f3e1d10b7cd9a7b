"""Downpour with partitioned replicas (topology.partitions_per_replica = P > 1): the glue.

Every replica is P ranks, one per partition, joined by a per-replica communicator. A partition
trains its own block of the partition-major parameter vector (model/partition.py) and talks
only to the shards holding that block (layout.shards_of_partition). Its partitions stop on
the same step: the stop reason is agreed every step (limits of wall time or a preemption
signal may reach them a step apart, and one partition alone would wait for the others forever).
"""

import numpy as np

from ..comm.param_server import ReplicaEndpoint
from ..comm.partition_exchange import MaxAgreement, MpiExchanger, split_replica_comm
from ..model.partition import split_model
from ..model.partitioned import PartitionedNetwork

STOP_REASONS = (None, "steps", "epochs", "seconds", "preempted")


def replica_comm(world_comm, role, parts: int):
    """Collective over every rank: the communicator of this rank's replica (rank = partition id),
    or None (unpartitioned, or not a replica)."""
    if parts == 1:
        return None
    return split_replica_comm(world_comm, role.replica_id if role.role == "replica" else None, role.partition_id)


def partition_network(job, comm) -> PartitionedNetwork:
    plans, _ = split_model(job.network, job.spec.topology.partitions_per_replica)
    return PartitionedNetwork(job.network, plans, job.role.partition_id, MpiExchanger(comm, job.network.dtype))


def own_shards(job) -> tuple[list[int], list[tuple[int, int]]]:
    """(shard ids, their ranges relative to this partition's block) for a replica rank."""
    layout, partition = job.layout, max(job.role.partition_id, 0)
    shard_ids = layout.shards_of_partition(partition)
    base = layout.partition_offsets[partition] if layout.partition_offsets else 0
    return shard_ids, [(layout.shard_ranges[s][0] - base, layout.shard_ranges[s][1] - base) for s in shard_ids]


def stop_agreement(comm):
    """run_loop's `agree`: every partition of the replica stops for the strongest reason any has."""
    strongest = MaxAgreement(comm)

    def agree(reason):
        return STOP_REASONS[strongest(STOP_REASONS.index(reason))]

    return agree


class ShardSubset:
    """A ReplicaEndpoint seen through local shard indices 0..k-1 (this partition's shards)."""

    def __init__(self, endpoint: ReplicaEndpoint, shard_ids: list[int]):
        self.inner, self.shard_ids = endpoint, list(shard_ids)

    @property
    def replica_id(self) -> int:
        return self.inner.replica_id

    @property
    def fetch_retries(self) -> int:
        return self.inner.fetch_retries

    def fetch(self, index: int, out: np.ndarray) -> int:
        return self.inner.fetch(self.shard_ids[index], out)

    def slot_free(self, index: int) -> bool:
        return self.inner.slot_free(self.shard_ids[index])

    def try_push(self, index: int, grad, base_version: int, steps: int) -> bool:
        return self.inner.try_push(self.shard_ids[index], grad, base_version, steps)

    def push(self, index: int, grad, base_version: int, steps: int) -> None:
        self.inner.push(self.shard_ids[index], grad, base_version, steps)
