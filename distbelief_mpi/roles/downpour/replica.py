"""A Downpour replica rank: open its data part, train with DownpourHooks, report its figures.

A partitioned replica is P such ranks (one per partition, joined by `partners_comm`); each
trains its own block of the parameters and talks only to the shards that hold it.
"""

import time
from dataclasses import dataclass
from functools import partial

import numpy as np

from ...comm.control import barrier_sleeping
from ...comm.messages import Messenger
from ...comm.param_server import ParamServerWindows, ReplicaEndpoint
from ...data.batches import BatchStream, open_replica_stream
from ...data.hdf5 import read_split
from ...job import Job
from ...runtime.fault_injection import FaultInjector
from ...runtime.progress import Progress
from ...runtime.rundir import MetricsLog
from ...runtime.watchdog import Watchdog
from ..loop import LoopResult, Reporting, run_loop, warm_up
from ..partitioned_replica import ShardSubset, own_shards, partition_network, stop_agreement
from ..shard_order import parameter_order
from .checkpoints import CheckpointCoordinator
from .hooks import DownpourHooks, finish_replica, release_warmstart, wait_for_warmstart


@dataclass(frozen=True)
class ReplicaRun:
    """What one replica rank's training loop works with."""

    job: Job
    network: object  # model.network.Network, or a PartitionedNetwork (this partition's part)
    params: np.ndarray  # (network.n_params,) float32, the working copy
    stream: BatchStream
    hooks: DownpourHooks
    first_step: int  # > 0 when resumed
    partners_comm: object | None  # this replica's communicator (partitioned), else None
    windows: ParamServerWindows


def train_replica(job: Job, windows, messenger: Messenger, partners_comm, test_set, watchdog: Watchdog) -> dict:
    """Train until a limit; returns this rank's figures for the summary. test_set: the lead's."""
    spec, info, role = job.spec, job.info, job.role
    network = partition_network(job, partners_comm) if partners_comm is not None else job.network
    params = np.empty(network.n_params, np.float32)
    first_step = job.resume.step if job.resume else 0
    shard_ids, local_ranges = own_shards(job)
    with open_replica_stream(
        info.path,
        info.n_train,
        role.replica_id,
        spec.topology.replicas,
        spec.optimizer.batch_size,
        spec.run.seed,
        spec.data.chunk_examples,
    ) as stream:
        if first_step:
            stream.fast_forward(first_step * spec.optimizer.batch_size)
        hooks = _hooks(job, windows, messenger, params, stream, shard_ids, local_ranges)
        run = ReplicaRun(job, network, params, stream, hooks, first_step, partners_comm, windows)
        warm_up(job.network, *read_split(info.path, "train", 0, 2))  # the same kernels a partition runs
        barrier_sleeping(messenger.comm)  # shards have published the initial parameters
        with watchdog:
            if _warmstart(job) and role.replica_id != 0:
                wait_for_warmstart(messenger, job.layout.lead_rank)
            started = time.perf_counter()
            result = _loop(run, test_set, FaultInjector(spec.faults, role.replica_id))
            finish_replica(messenger, hooks, [windows.shard_ranks[s] for s in shard_ids], partners_comm)
    return _figures(run, result, time.perf_counter() - started)


def _warmstart(job: Job) -> bool:
    """Replica 0 trains alone first (the paper's warmstart); not again after a resume."""
    return bool(job.spec.optimizer.warmstart_steps and job.spec.topology.replicas > 1 and not job.resume)


def _hooks(job: Job, windows, messenger, params, stream, shard_ids, local_ranges) -> DownpourHooks:
    spec, role = job.spec, job.role
    is_lead = role.replica_id == 0 and role.partition_id == 0
    waiting = [r.world_rank for r in job.layout.roles if r.role == "replica" and r.replica_id != 0]
    release = partial(release_warmstart, messenger, waiting) if _warmstart(job) and is_lead else None
    checkpoints = CheckpointCoordinator(job, messenger, windows.shard_ranks) if is_lead else None
    endpoint = ShardSubset(
        ReplicaEndpoint(windows, role.replica_id, hung_after=spec.faults.watchdog_seconds), shard_ids
    )
    other_replicas = [rank for rank in job.layout.ranks_of("replica") if rank != role.world_rank]
    return DownpourHooks(spec, endpoint, local_ranges, params, messenger, other_replicas, release, checkpoints, stream)


def _loop(run: ReplicaRun, test_set, inject: FaultInjector) -> LoopResult:
    """The lead replica (the one given the test set) also writes metrics, evaluates and prints progress.
    A partitioned lead evaluates the whole model on parameters fetched from every shard."""
    job = run.job
    agree = stop_agreement(run.partners_comm) if run.partners_comm is not None else None
    args = (job.spec, run.network, run.params, run.stream, run.hooks)
    if test_set is None:
        return run_loop(*args, Reporting(), run.first_step, inject, agree)
    with MetricsLog(job.run_dir) as metrics:
        progress = Progress(job.spec.run.progress_seconds if job.progress else 0)
        whole = (lambda: (job.network, fetch_final(job, run.windows))) if run.partners_comm is not None else None
        return run_loop(*args, Reporting(metrics, test_set, progress, whole), run.first_step, inject, agree)


def fetch_final(job: Job, windows: ParamServerWindows) -> np.ndarray:
    """The shards' parameters (N,), in the canonical order (after the last push no shard writes).
    Only for the lead's evaluation and params.h5."""
    final = np.empty(job.network.n_params, np.float32)
    endpoint = ReplicaEndpoint(windows, job.role.replica_id)
    for shard_id, (start, stop) in enumerate(job.layout.shard_ranges):
        endpoint.fetch(shard_id, final[start:stop])
    order = parameter_order(job)
    return final if order is None else order.to_canonical(final)


def _figures(run: ReplicaRun, result: LoopResult, loop_s: float) -> dict:
    hooks, role = run.hooks, run.job.role
    return {
        "role": "replica",
        "replica_id": role.replica_id,
        "partition_id": role.partition_id,
        "steps": result.clock.steps,
        "examples_seen": result.examples_seen,
        "examples_this_run": result.examples_this_run,
        "train_s": result.train_s,
        "loop_s": loop_s,
        "last_train_loss": result.last_train_loss,
        "stopped_on": result.stopped_on,
        "pushes": hooks.pushes,
        "deferred_pushes": hooks.deferred_pushes,
        "fetch_retries": hooks.endpoint.fetch_retries,
        "epochs": run.stream.epoch,
        "final_checkpoint": hooks.final_checkpoint_step,
    }
