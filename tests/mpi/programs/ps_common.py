"""Shared set-up of the parameter-server test programs: rank 0..S-1 shards, the rest replicas."""

import resource
import time

import numpy as np

from distbelief_mpi.comm.control import barrier_sleeping
from distbelief_mpi.comm.messages import DONE, Messenger, ReplicaDone
from distbelief_mpi.comm.param_server import DEFAULT_LANDING_SLOTS, ParamServerWindows
from distbelief_mpi.comm.replica_endpoint import ReplicaEndpoint
from distbelief_mpi.config import Optimizer
from distbelief_mpi.layout import shard_ranges
from distbelief_mpi.roles.downpour.shard import Shard


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_ps(
    world_comm,
    n_shards: int,
    initial: np.ndarray,
    optimizer: Optimizer,
    replica_body,
    landing_slots: int = DEFAULT_LANDING_SLOTS,
    shard_extra=None,
):
    """Shards serve until every replica is done; replica_body(endpoint, replica_id, ranges)
    returns the replica's record. Returns this rank's record (shards: stats and final slice,
    plus shard_extra(shard)'s dict if given)."""
    rank, size = world_comm.Get_rank(), world_comm.Get_size()
    ranges = shard_ranges(len(initial), n_shards)
    shard_id = rank if rank < n_shards else -1
    windows = ParamServerWindows(world_comm, list(range(n_shards)), ranges, size - n_shards, shard_id, landing_slots)
    if shard_id >= 0:
        start, stop = ranges[shard_id]
        shard = Shard(windows, shard_id, optimizer, initial[start:stop])
        record = serve(world_comm, shard)
        if shard_extra is not None:
            record.update(shard_extra(shard))
    else:
        replica_id = rank - n_shards
        barrier_sleeping(world_comm)
        record = {"role": "replica", **replica_body(ReplicaEndpoint(windows, replica_id), replica_id, ranges)}
        Messenger(world_comm).send_to_all(DONE, ReplicaDone(replica_id), range(n_shards))
    barrier_sleeping(world_comm)
    windows.close()
    return record


def serve(world_comm, shard: Shard) -> dict:
    """A shard's side of a test program: serve until every replica is done, then its record."""
    shard.warm_up()
    barrier_sleeping(world_comm)
    cpu, wall = cpu_seconds(), time.perf_counter()
    shard.serve(Messenger(world_comm))
    return {
        "role": "shard",
        "shard_id": shard.shard_id,
        "version": shard.version,
        "params": shard.params.tolist(),
        "serve_cpu_fraction": (cpu_seconds() - cpu) / (time.perf_counter() - wall),
        "landing_slots": shard.slots.n_slots,
        **shard.stats.as_dict(),
    }
