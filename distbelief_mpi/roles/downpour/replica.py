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
from ...comm.param_server import ParamServerWindows
from ...comm.replica_endpoint import ReplicaEndpoint
from ...data.batches import BatchStream, open_replica_stream
from ...job import Job
from ...model.warm_up import warm_up_kernels
from ...runtime.fault_injection import FaultInjector
from ...runtime.progress import progress_for
from ...runtime.rundir import MetricsLog
from ...runtime.watchdog import Watchdog
from ..loop import LoopResult, Reporting, run_loop
from ..partitioned_replica import ShardSubset, own_shards, partition_network, stop_agreement
from .checkpoints import CheckpointCoordinator
from .final import BlockEvaluator
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


def train_replica(
    job: Job, windows, messenger: Messenger, partners_comm, test_set, watchdog: Watchdog, replacer=None
) -> dict:
    """Train until a limit; returns this rank's figures for the summary. test_set and replacer
    (replacer.Replacer): the lead's."""
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
        hooks = _hooks(job, windows, messenger, params, stream, shard_ids, local_ranges, replacer)
        run = ReplicaRun(job, network, params, stream, hooks, first_step, partners_comm, windows)
        warm_up_kernels(job.network.layers)  # tiny copies: the kernels a partition runs, not its size
        barrier_sleeping(messenger.comm)  # shards have published the initial parameters
        with watchdog:
            if _warmstart(job) and role.replica_id != 0:
                wait_for_warmstart(messenger, job.layout.lead_rank)
            started = time.perf_counter()
            result = _loop(run, test_set, FaultInjector(spec.faults, role.replica_id))
            finish_replica(messenger, hooks, [windows.shard_ranks[s] for s in shard_ids], partners_comm)
    return replica_figures(run, result, time.perf_counter() - started)


def _warmstart(job: Job) -> bool:
    """Replica 0 trains alone first (the paper's warmstart); not again after a resume."""
    return bool(job.spec.optimizer.warmstart_steps and job.spec.topology.replicas > 1 and not job.resume)


def _hooks(job: Job, windows, messenger, params, stream, shard_ids, local_ranges, replacer=None) -> DownpourHooks:
    spec, role = job.spec, job.role
    is_lead = role.replica_id == 0 and role.partition_id == 0
    waiting = [r.world_rank for r in job.layout.roles if r.role == "replica" and r.replica_id != 0]
    release = partial(release_warmstart, messenger, waiting) if _warmstart(job) and is_lead else None
    checkpoints = CheckpointCoordinator(job, messenger, windows.shard_ranks) if is_lead else None
    endpoint = ShardSubset(
        ReplicaEndpoint(windows, role.replica_id, hung_after=spec.faults.watchdog_seconds), shard_ids
    )
    other_replicas = [rank for rank in job.layout.ranks_of("replica") if rank != role.world_rank]
    return DownpourHooks(
        spec, endpoint, local_ranges, params, messenger, other_replicas, release, checkpoints, stream, replacer
    )


def _loop(run: ReplicaRun, test_set, inject: FaultInjector) -> LoopResult:
    """Replica 0 (given the test set) also evaluates; its partition 0 writes metrics and prints
    progress. A partitioned replica 0 evaluates the shards' parameters model-parallel, every
    partition on its own block (final.BlockEvaluator); an unpartitioned one its working copy."""
    job = run.job
    agree = stop_agreement(run.partners_comm) if run.partners_comm is not None else None
    args = (job.spec, run.network, run.params, run.stream, run.hooks)
    if test_set is None:
        return run_loop(*args, Reporting(), run.first_step, inject, agree)
    evaluate = None
    if run.partners_comm is not None:
        evaluate = BlockEvaluator(run.network, run.hooks.endpoint, [(r.start, r.stop) for r in run.hooks.ranges])
    if job.role.partition_id != 0:
        return run_loop(*args, Reporting(test_set=test_set, evaluate=evaluate), run.first_step, inject, agree)
    with MetricsLog(job.run_dir) as metrics:
        report = Reporting(metrics, test_set, progress_for(job), evaluate)
        return run_loop(*args, report, run.first_step, inject, agree)


def replica_figures(run: ReplicaRun, result: LoopResult, loop_s: float) -> dict:
    """This replica rank's record for the summary (roles/downpour/summary.py)."""
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
