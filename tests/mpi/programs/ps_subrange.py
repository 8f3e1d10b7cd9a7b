"""Fewer shards than partitions (S < P): each shard holds the whole blocks of a group of
partitions, and a partition pushes and fetches its block only, a part of its shard's slice.

Ranks: S shards, then R replicas x P partitions (replica-major), blocks of uneven sizes. Every
partition pushes known integer gradients for its block (try_push, or push waiting) with
fixed-rate SGD at rate 1 on the shards; it fetches its block through the same ShardSubset and,
when it is its block's only pusher (R = 1), the fetch must equal the initial block minus its
own pushes once they are taken. Shards report their final slices. args: shards replicas
partitions [chunk] (chunk > 0: pushes land in chunks of that many elements)."""

import time

import numpy as np

from distbelief_mpi.comm.control import Backoff, barrier_sleeping
from distbelief_mpi.comm.messages import DONE, Messenger, ReplicaDone
from distbelief_mpi.comm.param_server import ParamServerWindows
from distbelief_mpi.comm.replica_endpoint import ReplicaEndpoint
from distbelief_mpi.config import Optimizer, parse_job
from distbelief_mpi.layout import Layout, assign_roles, partition_shard_ranges
from distbelief_mpi.roles.downpour.shard import Shard
from distbelief_mpi.roles.partitioned_replica import OwnShards, ShardSubset
from tests.mpi.programs.ps_common import serve

PUSHES = 40


def block_offsets(parts: int) -> tuple[int, ...]:
    sizes = [100 + 37 * p for p in range(parts)]  # uneven blocks, not multiples of 16
    return tuple(int(x) for x in np.concatenate([[0], np.cumsum(sizes)]))


def plan(n_shards: int, replicas: int, parts: int) -> Layout:
    offsets = block_offsets(parts)
    spec = parse_job(
        {
            "data": {"path": "unused.h5"},
            "run": {"steps": 1},
            "topology": {"shards": n_shards, "replicas": replicas, "partitions_per_replica": parts},
        }
    )
    roles = assign_roles(spec.topology)
    ranges, held = partition_shard_ranges(offsets, n_shards)
    return Layout(len(roles), roles, ranges, offsets[-1], offsets, held)


def main(world_comm, args):
    n_shards, replicas, parts = (int(a) for a in args[:3])
    chunk = int(args[3]) if len(args) > 3 else 0
    layout = plan(n_shards, replicas, parts)
    role = layout.role_of(world_comm.Get_rank())
    initial = np.arange(layout.n_params, dtype=np.float32)
    windows = ParamServerWindows(
        world_comm, layout.ranks_of("shard"), layout.shard_ranges, replicas, role.shard_id, landing_slots=2
    )
    if role.role == "shard":
        start, stop = layout.shard_ranges[role.shard_id]
        pushers = len(layout.shard_partitions[role.shard_id])
        optimizer = Optimizer(server_rule="sgd", server_learning_rate=1.0)
        record = serve(world_comm, Shard(windows, role.shard_id, optimizer, initial[start:stop], pushers))
        record["range"] = [start, stop]
    else:
        barrier_sleeping(world_comm)
        record = push_block(layout, windows, role, initial, chunk)
        shard_ranks = [layout.ranks_of("shard")[s] for s in layout.shards_of_partition(role.partition_id)]
        Messenger(world_comm).send_to_all(DONE, ReplicaDone(role.replica_id), shard_ranks)
    barrier_sleeping(world_comm)
    windows.close()
    return record


def push_block(layout: Layout, windows, role, initial: np.ndarray, chunk: int) -> dict:
    pieces = layout.pieces_of_partition(role.partition_id)
    endpoint = ShardSubset(ReplicaEndpoint(windows, role.replica_id, chunk_elements=chunk), OwnShards(pieces))
    start, stop = layout.block_of_partition(role.partition_id)
    rng = np.random.default_rng(100 * role.replica_id + role.partition_id)
    pushed = np.zeros(stop - start, np.float64)  # (block,) the sum of what was posted
    for _ in range(PUSHES):
        grad = rng.integers(-3, 4, stop - start).astype(np.float32)
        for index, piece in enumerate(pieces):
            part = slice(piece.block_offset, piece.block_offset + piece.length)
            if rng.random() < 0.5:
                endpoint.push(index, grad[part], 0, 1)
            elif not endpoint.try_push(index, grad[part], 0, 1):
                continue  # refused: this part is not sent
            pushed[part] += grad[part]
        time.sleep(rng.random() * 2e-4)
    for index in range(len(pieces)):  # wait until our last pushes are taken
        wait = Backoff()
        while not endpoint.slot_free(index):
            wait.sleep()
    fetched = np.empty(stop - start, np.float32)
    for index, piece in enumerate(pieces):
        endpoint.fetch(index, fetched[piece.block_offset : piece.block_offset + piece.length])
    return {
        "role": "replica",
        "replica_id": role.replica_id,
        "partition_id": role.partition_id,
        "block": [start, stop],
        "pushed_sum": pushed.tolist(),
        "pushes": sum(endpoint.inner.pushed),
        "fetch_error": float(np.max(np.abs(fetched - (initial[start:stop] - pushed)))),
    }
