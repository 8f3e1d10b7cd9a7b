"""Downpour with partitioned replicas (topology.partitions_per_replica = P > 1): the glue.

Every replica is P ranks, one per partition (image layers in blocks of whole rows, or of rows x
columns with topology.partition_grid), joined by a per-replica communicator. A partition
trains its own block of the partition-major parameter vector (model/partition.py) and talks
only to the shards holding that block (layout.shards_of_partition). Its partitions stop on
the same step: the stop reason is agreed every step (limits of wall time or a preemption
signal may reach them a step apart, and one partition alone would wait for the others forever).
"""

import numpy as np

from ..comm.partition_exchange import MaxAgreement, MpiExchanger, split_replica_comm
from ..comm.replica_endpoint import FetchItem, PushItem, ReplicaEndpoint
from ..layout import Piece
from ..model.partition import job_split
from ..model.partitioned import PartitionedNetwork

STOP_REASONS = (None, "steps", "epochs", "seconds", "preempted")


def replica_comm(world_comm, role, parts: int):
    """Collective over every rank: the communicator of this rank's replica (rank = partition id),
    or None (unpartitioned, or not a replica)."""
    if parts == 1:
        return None
    return split_replica_comm(world_comm, role.replica_id if role.role == "replica" else None, role.partition_id)


def partition_network(job, comm) -> PartitionedNetwork:
    plans, _ = job_split(job.network, job.spec.topology)  # blocks of the job's partition_grid
    return PartitionedNetwork(job.network, plans, job.role.partition_id, MpiExchanger(comm, job.network.dtype))


class OwnShards(list):
    """The ids of the shards a partition talks to (a list[int], one per piece), with `pieces`:
    layout.Piece(shard id, offset in the shard's slice, length, offset in the partition's block)."""

    def __init__(self, pieces: list[Piece]):
        super().__init__(piece.shard_id for piece in pieces)
        self.pieces = list(pieces)


def own_shards(job) -> tuple[OwnShards, list[tuple[int, int]]]:
    """(the shards, with this rank's piece of each; the pieces' ranges in this partition's
    block) for a replica rank. Pass the first to ShardSubset, the second as the shard ranges."""
    pieces = job.layout.pieces_of_partition(max(job.role.partition_id, 0))
    return OwnShards(pieces), [(p.block_offset, p.block_offset + p.length) for p in pieces]


def stop_agreement(comm):
    """run_loop's `agree`: every partition of the replica stops for the strongest reason any has."""
    strongest = MaxAgreement(comm)

    def agree(reason):
        return STOP_REASONS[strongest(STOP_REASONS.index(reason))]

    return agree


class ShardSubset:
    """A ReplicaEndpoint seen through local indices 0..k-1 of this partition's pieces: index i
    fetches and pushes piece i, the part of its shard's slice that holds the partition's
    elements (the whole slice unless the shard holds several partitions' blocks).

    shards: own_shards' OwnShards, or plain shard ids (each piece then the whole slice)."""

    def __init__(self, endpoint: ReplicaEndpoint, shards: OwnShards | list[int]):
        self.inner, self.shard_ids = endpoint, list(shards)
        pieces = shards.pieces if isinstance(shards, OwnShards) else None
        self.offsets = [p.shard_offset for p in pieces] if pieces else [0] * len(self.shard_ids)

    @property
    def replica_id(self) -> int:
        return self.inner.replica_id

    @property
    def fetch_retries(self) -> int:
        return self.inner.fetch_retries

    def fetch(self, index: int, out: np.ndarray) -> int:
        """out (piece length,) <- piece `index`; returns its shard's version."""
        return self.inner.fetch(self.shard_ids[index], out, self.offsets[index])

    def slot_free(self, index: int) -> bool:
        return self.inner.slot_free(self.shard_ids[index])

    def try_push(self, index: int, grad, base_version: int, steps: int) -> bool:
        """Post grad (piece length,) as piece `index`'s gradient, if a slot is free."""
        return self.inner.try_push(self.shard_ids[index], grad, base_version, steps, self.offsets[index])

    def push(self, index: int, grad, base_version: int, steps: int) -> None:
        self.inner.push(self.shard_ids[index], grad, base_version, steps, self.offsets[index])

    def pieces(self, ranges: list[slice]) -> list[tuple[int, int, int, int]]:
        """(shard id, offset in its slice, start in our vector, length) per local piece; ranges:
        where each piece lies in our vector."""
        return [
            (self.shard_ids[i], self.offsets[i], part.start, part.stop - part.start) for i, part in enumerate(ranges)
        ]

    def exchange(self, pushes: list[PushItem], fetches: list[FetchItem]) -> tuple[list[bool], list[int]]:
        """ReplicaEndpoint.exchange with items naming local pieces (their offset is the piece's)."""
        return self.inner.exchange([self._push(p) for p in pushes], [self._fetch(f) for f in fetches])

    def push_all(self, pushes: list[PushItem]) -> None:
        self.inner.push_all([self._push(p) for p in pushes])

    def _push(self, item: PushItem) -> PushItem:
        index = item.shard_id
        return item._replace(shard_id=self.shard_ids[index], offset=self.offsets[index])

    def _fetch(self, item: FetchItem) -> FetchItem:
        index = item.shard_id
        return item._replace(shard_id=self.shard_ids[index], offset=self.offsets[index])
