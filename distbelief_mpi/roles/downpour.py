"""Downpour SGD on every rank: shards serve, replicas train, the lead replica reports.

Sequence (every rank): open the windows; shards publish the initial parameters; a
sleeping barrier; replicas train (replica 0 alone first during a warmstart) while shards
apply pushes; replicas push what is left and say DONE; shards drain and stop; every rank
sends its statistics to the lead replica (replica 0), which fetches the final parameters
from the shards, tells every rank still there that all is done (and who left), evaluates
the parameters and writes the summary.

Every wait after the start is point-to-point, never a collective over all ranks: with
faults.replica_loss = continue a replica may have left, and a collective would wait for
it forever. A watchdog (watchdog.py) runs on every rank while it trains or serves.
"""

import logging
import time
from functools import partial

import numpy as np

from ..comm.control import TAG_REPORT, TAG_TEARDOWN, barrier_sleeping
from ..comm.param_server import ParamServerWindows, ReplicaEndpoint
from ..comm.world import abort_job
from ..data.batches import open_replica_stream
from ..data.hdf5 import read_split
from ..fault_injection import FaultInjector
from ..kernels import sgd_update_
from ..limits import RunClock
from ..progress import Progress
from ..rundir import MetricsLog
from ..watchdog import Watchdog
from .checkpoint_coordinator import CheckpointCoordinator, reply_to_checkpoint
from .downpour_replica import DownpourHooks, finish_replica, release_warmstart, wait_for_warmstart
from .liveness import Peers, ReplicaWatch, collect_reports, recv_watched
from .loop import Reporting, log_eval, run_loop
from .partitions import (
    ShardSubset,
    initial_params,
    own_shards,
    parameter_order,
    partition_network,
    replica_comm,
    stop_agreement,
)
from .shard import Shard
from .shard_checkpoint import load_shard, shard_file_name
from .summary import downpour_summary

log = logging.getLogger(__name__)


def run_downpour(job, world_comm, world_rank: int):
    """Returns (summary, final params) on the lead replica, (None, None) elsewhere. Sets
    job.lost_ranks to the world ranks that left mid-run (faults.replica_loss = continue)."""
    layout, role = job.layout, job.role
    shard_ranks, replica_ranks = layout.ranks_of("shard"), layout.ranks_of("replica")
    peers = Peers.gather(world_comm)
    job_replica_comm = replica_comm(world_comm, role, job.spec.topology.partitions_per_replica)
    windows = ParamServerWindows(
        world_comm,
        shard_ranks,
        layout.shard_ranges,
        job.spec.topology.replicas,
        role.shard_id if role.role == "shard" else -1,
    )
    # No try/finally around this: closing the windows is collective, so after an error on
    # one rank it would wait forever; the error aborts the whole job instead (train.py).
    lead = layout.lead_rank
    # The lead evaluates during training and at the end: one read of the test split serves both.
    test_set = read_split(job.info.path, "test") if world_rank == lead else None
    watchdog = Watchdog(
        job.spec.faults.watchdog_seconds, f"rank {world_rank} ({role.label})", partial(abort_job, world_comm)
    )
    if role.role == "shard":
        local = _serve_shard(job, windows, world_comm, peers, watchdog)
    else:
        local = _train_replica(job, windows, world_comm, job_replica_comm, test_set, watchdog)
    with watchdog:
        if world_rank != lead:  # the lead says when all is done, and whether anyone left
            world_comm.send(local, dest=lead, tag=TAG_REPORT)
            job.lost_ranks = recv_watched(world_comm, lead, TAG_TEARDOWN, peers, "the lead replica")
        else:
            gathered, job.lost_ranks = collect_reports(world_comm, local, shard_ranks, replica_ranks, peers)
            final = _fetch_final(job, windows)  # every push is applied; shards are idle
            for rank in sorted(set(range(layout.world_size)) - set(job.lost_ranks) - {lead}):
                world_comm.send(job.lost_ranks, dest=rank, tag=TAG_TEARDOWN)
    if not job.lost_ranks:
        windows.close()  # collective: only when every rank is still there (train.py ends the others)
    if world_rank != lead:
        return None, None
    return _report(job, gathered, final, test_set), final


def _serve_shard(job, windows, world_comm, peers, watchdog) -> dict:
    start, stop = job.layout.shard_ranges[job.role.shard_id]
    initial = initial_params(job)[start:stop]
    shard = Shard(windows, job.role.shard_id, job.spec.optimizer, initial)
    resumed_from = None
    if job.resume:
        path = job.resume.directory / shard_file_name(job.role.shard_id)
        shard.restore(load_shard(path, job.role.shard_id, start, stop))
        resumed_from = shard.version
        log.info("resumed from %s at version %d", path, shard.version)
    shard.warm_up()
    barrier_sleeping(world_comm)  # initial parameters are published
    log.info("serving parameters [%d, %d)", start, stop)
    lead, faults = job.layout.lead_rank, job.spec.faults
    owner = job.layout.shard_partitions[job.role.shard_id] if job.layout.shard_partitions else 0
    pushers = [job.layout.rank_of(r, owner) for r in range(job.spec.topology.replicas)]  # who pushes to us
    with watchdog:
        shard.serve(
            world_comm,
            lambda request, _: reply_to_checkpoint(world_comm, shard, start, stop, request, lead),
            ReplicaWatch(peers, pushers, faults.watchdog_seconds),
            faults.replica_loss,
        )
    return {
        "role": "shard",
        "shard_id": job.role.shard_id,
        "version": shard.version,
        "resumed_from_version": resumed_from,
        **shard.stats.as_dict(),
    }


def _train_replica(job, windows, world_comm, comm, test_set, watchdog) -> dict:
    """comm: this replica's communicator when it is partitioned (else None)."""
    spec, info, role = job.spec, job.info, job.role
    replica_id, first = role.replica_id, role.replica_id == 0 and role.partition_id == 0
    first_step = job.resume.step if job.resume else 0
    network = partition_network(job, comm) if comm is not None else job.network
    params = np.empty(network.n_params, np.float32)
    warm = spec.optimizer.warmstart_steps and spec.topology.replicas > 1 and not job.resume
    others = [r.world_rank for r in job.layout.roles if r.role == "replica" and r.replica_id != 0]
    release = partial(release_warmstart, world_comm, others) if warm and first else None
    checkpoints = CheckpointCoordinator(job, world_comm, windows.shard_ranks) if first else None
    shard_ids, local_ranges = own_shards(job)
    with open_replica_stream(
        info.path,
        info.n_train,
        replica_id,
        spec.topology.replicas,
        spec.optimizer.batch_size,
        spec.run.seed,
        spec.data.chunk_examples,
    ) as stream:
        if first_step:
            stream.fast_forward(first_step * spec.optimizer.batch_size)
        endpoint = ShardSubset(ReplicaEndpoint(windows, replica_id, hung_after=spec.faults.watchdog_seconds), shard_ids)
        hooks = DownpourHooks(spec, endpoint, local_ranges, params, release, checkpoints, stream)
        hooks.other_replicas = [rank for rank in job.layout.ranks_of("replica") if rank != role.world_rank]
        warm_up(job.network, *read_split(info.path, "train", 0, 2))  # the same kernels a partition runs
        barrier_sleeping(world_comm)  # shards have published the initial parameters
        with watchdog:
            if warm and replica_id != 0:
                wait_for_warmstart(world_comm, job.layout.lead_rank)
            started = time.perf_counter()
            result = _replica_loop(
                job,
                network,
                params,
                stream,
                hooks,
                first_step,
                test_set,
                FaultInjector(spec.faults, replica_id),
                comm,
                windows,
            )
            finish_replica(world_comm, hooks, [windows.shard_ranks[s] for s in shard_ids], comm)
    return {
        "role": "replica",
        "replica_id": replica_id,
        "partition_id": role.partition_id,
        "steps": result.clock.steps,
        "examples_seen": result.examples_seen,
        "examples_this_run": result.examples_this_run,
        "train_s": result.train_s,
        "loop_s": time.perf_counter() - started,
        "last_train_loss": result.last_train_loss,
        "stopped_on": result.stopped_on,
        "pushes": hooks.pushes,
        "deferred_pushes": hooks.deferred_pushes,
        "fetch_retries": hooks.endpoint.fetch_retries,
        "epochs": stream.epoch,
        "final_checkpoint": hooks.final_checkpoint_step,
    }


def _replica_loop(job, network, params, stream, hooks, first_step: int, test_set, inject, comm, windows):
    """The lead replica (the one given the test set) also writes metrics, evaluates and prints progress.
    A partitioned lead evaluates the whole model on parameters fetched from every shard."""
    agree = stop_agreement(comm) if comm is not None else None
    if test_set is None:
        return run_loop(job.spec, network, params, stream, hooks, Reporting(), first_step, inject, agree)
    with MetricsLog(job.run_dir) as metrics:
        progress = Progress(job.spec.run.progress_seconds if job.progress else 0)
        whole = (lambda: (job.network, _fetch_final(job, windows))) if comm is not None else None
        report = Reporting(metrics, test_set, progress, whole)
        return run_loop(job.spec, network, params, stream, hooks, report, first_step, inject, agree)


def warm_up(network, x_few, y_few) -> None:
    """Load (or compile) the model's kernels before the start barrier, so the first timed
    steps are real steps (a cold Numba kernel can take a second)."""
    params = network.init_params(0)
    network.loss_and_grad(params, x_few, y_few, np.empty_like(params))
    sgd_update_(params, params, np.float32(0))


def _fetch_final(job, windows) -> np.ndarray:
    """The shards' parameters, in the canonical order (after the last push, no shard writes any more)."""
    final = np.empty(job.network.n_params, np.float32)
    endpoint = ReplicaEndpoint(windows, job.role.replica_id)
    for shard_id, (start, stop) in enumerate(job.layout.shard_ranges):
        endpoint.fetch(shard_id, final[start:stop])
    order = parameter_order(job)
    return final if order is None else order.to_canonical(final)


def _report(job, gathered: list[dict], final: np.ndarray, test_set) -> dict:
    x_test, y_test = test_set
    with MetricsLog(job.run_dir) as metrics:
        replica0 = next(g for g in gathered if g["role"] == "replica" and g["replica_id"] == 0)
        clock = RunClock(steps=replica0["steps"], epochs=replica0["epochs"], seconds=replica0["loop_s"])
        test_loss, test_accuracy = log_eval(metrics, job.network, final, x_test, y_test, clock)
    return downpour_summary(job, gathered, test_loss, test_accuracy)
