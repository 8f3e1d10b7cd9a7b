"""Sandblaster L-BFGS on every rank: the coordinator optimises, shards hold the vectors,
replicas compute portions (docs/sandblaster.md).

Rank 0 is the coordinator. It runs optim/lbfgs.py against roles/sandblaster/cluster.py and
never holds the parameters: replica 0 (which alone reads the test split) evaluates the shards'
x on the test split (run.eval_every, and at the end), and the coordinator streams params.h5
from the shards a chunk at a time before it stops everyone. Batches: consecutive windows
of optimizer.sandblaster_batch examples over the training split shuffled once by run.seed;
each runs lbfgs_iterations_per_batch iterations with fresh history (one batch, the whole
split, runs until a run limit or convergence). A step is one L-BFGS iteration. The batch
loop and checkpoints: roles/sandblaster/batch_loop.BatchLoop; the coordinator's messages:
roles/sandblaster/cluster.ShardsAndReplicas; its bookkeeping of evaluations (who computes
which portion, which result counts): optim/evaluation_state.EvaluationState. Every control
message is a typed record of comm/messages.py.
"""

import logging
import time
from functools import partial

import numpy as np

from ...checkpoint.params_file import PARAMS_CHUNK, params_stream
from ...comm.control import barrier_sleeping
from ...comm.messages import Messenger
from ...comm.param_server import ParamServerWindows
from ...comm.replica_endpoint import ReplicaEndpoint
from ...comm.world import abort_job, max_to_root
from ...data.hdf5 import read_split
from ...model.warm_up import warm_up_kernels
from ...optim.vector_ops import ShardVectors
from ...runtime.limits import RunClock
from ...runtime.peak_memory import peaks_from_vector, role_vector
from ...runtime.processes import rank_label
from ...runtime.rundir import MetricsLog
from ...runtime.watchdog import Watchdog
from ..liveness import Peers, Silence
from ..loop import record_eval
from ..partitioned_replica import ShardSubset, own_shards, partition_network, replica_comm
from ..shard_order import initial_params, parameter_order
from ..shard_start import sandblaster_state
from .batch_loop import BatchLoop
from .cluster import COORDINATOR_SILENCE, ShardsAndReplicas
from .replica import PortionWorker
from .shard import GradientSink, serve_commands

log = logging.getLogger(__name__)


def run_sandblaster(job, world_comm, world_rank: int):
    """Returns (summary, None) on the coordinator (it has written params.h5 itself), (None, None) elsewhere."""
    layout, role = job.layout, job.role
    shard_ranks = layout.ranks_of("shard")
    peers = Peers.gather(world_comm)
    comm = replica_comm(world_comm, role, job.spec.topology.partitions_per_replica)
    windows = ParamServerWindows(
        world_comm,
        shard_ranks,
        layout.shard_ranges,
        job.spec.topology.replicas,
        role.shard_id if role.role == "shard" else -1,
        landing_slots=job.spec.optimizer.landing_slots,
    )
    guard = Watchdog(
        job.spec.faults.watchdog_seconds, rank_label(world_rank, role.label), partial(abort_job, world_comm)
    )
    outcome = (None, None)
    if role.role == "shard":
        _serve(job, windows, world_comm, guard, _watch_coordinator(job, peers))
    elif role.role == "replica":
        _work(job, windows, world_comm, guard, comm, _watch_coordinator(job, peers))
    else:
        # partition 0 of each replica talks to the coordinator for all its partitions
        talks_to_coordinator = [layout.rank_of(r, 0) for r in range(job.spec.topology.replicas)]
        outcome = _coordinate(job, world_comm, shard_ranks, talks_to_coordinator, guard, peers)
    barrier_sleeping(world_comm)
    peaks = max_to_root(world_comm, role_vector(role.role), root=layout.lead_rank)  # every rank's peak, at its end
    windows.close()
    summary, final = outcome
    return ({**summary, "peak_rss_bytes": peaks_from_vector(peaks)} if summary is not None else None), final


def _watch_coordinator(job, peers: Peers) -> Silence:
    return Silence(
        peers,
        job.layout.lead_rank,
        "the coordinator",
        COORDINATOR_SILENCE * job.spec.faults.watchdog_seconds,
        f"{COORDINATOR_SILENCE:g} x faults.watchdog_seconds",
    )


def _serve(job, windows, world_comm, guard, silence: Silence) -> None:
    start, stop = job.layout.shard_ranges[job.role.shard_id]
    initial = initial_params(job, start, stop)
    sink = GradientSink(windows, job.role.shard_id, initial)
    sink.warm_up()
    vectors = ShardVectors(stop - start, job.spec.optimizer.lbfgs_memory)
    if job.resume:
        vectors.restore(sandblaster_state(job, job.role.shard_id, start, stop))
        log.info("resumed from %s (%d history pairs)", job.resume.directory, len(vectors.history))
    else:
        vectors.load("x", initial)
    del initial  # published (and copied into x): a slice-sized array not to keep for the whole run
    barrier_sleeping(world_comm)
    with guard:
        silence.heard_now()  # the wait starts now, not at start-up
        serve_commands(Messenger(world_comm), job.layout.lead_rank, sink, vectors, (start, stop), silence)


def _work(job, windows, world_comm, guard, comm, silence: Silence) -> None:
    x_train, y_train = read_split(job.info.path, "train")
    order = np.random.default_rng(job.spec.run.seed).permutation(len(y_train))  # the coordinator's rows
    train_set = (x_train[order], y_train[order])
    warm_up_kernels(job.network.layers)
    shard_ids, local_ranges = own_shards(job)
    endpoint = ShardSubset(
        ReplicaEndpoint(windows, job.role.replica_id, hung_after=job.spec.faults.watchdog_seconds), shard_ids
    )
    network = partition_network(job, comm) if comm is not None else None
    test_set = read_split(job.info.path, "test") if job.role.replica_id == 0 else None  # replica 0 evaluates
    barrier_sleeping(world_comm)
    with guard:
        silence.heard_now()
        partitions = Messenger(comm) if comm is not None else None
        PortionWorker(
            job,
            Messenger(world_comm),
            job.layout.lead_rank,
            endpoint,
            train_set,
            local_ranges,
            network,
            partitions,
            silence,
            test_set,
        ).run()


def _coordinate(job, world_comm, shard_ranks, replica_ranks, guard, peers):
    parts = job.spec.topology.partitions_per_replica
    cluster = ShardsAndReplicas(
        Messenger(world_comm),
        shard_ranks,
        replica_ranks,
        job.spec.optimizer,
        peers,
        job.spec.faults.watchdog_seconds,
        parameter_order(job),
        partner_ranks={r: [job.layout.rank_of(r, p) for p in range(1, parts)] for r in range(len(replica_ranks))},
    )
    barrier_sleeping(world_comm)
    with guard, MetricsLog(job.run_dir) as metrics:
        started = time.perf_counter()
        loop = BatchLoop(job, cluster, metrics)
        loop.run()
        wall_s = time.perf_counter() - started
        final = cluster.test_figures(0)  # the whole test split, by replica 0
        record_eval(
            metrics, final.loss, final.accuracy, final.n_examples, RunClock(steps=loop.clock.steps, seconds=wall_s)
        )
        _write_params(job, cluster, loop.clock.steps)
        replicas, shards = cluster.stop_everyone()
    return _summary(job, cluster, loop, replicas, shards, wall_s, final.loss, final.accuracy), None


def _write_params(job, cluster: ShardsAndReplicas, steps: int) -> None:
    """RUN_DIR/params.h5 (canonical order) from the shards' x, PARAMS_CHUNK floats at a time:
    the coordinator never holds more than one chunk."""
    path, n_params = job.run_dir / "params.h5", job.network.n_params
    with params_stream(path, n_params, {"step": steps}, parameter_order(job)) as write:
        for lo, piece in cluster.vector_chunks("x", job.layout.shard_ranges, PARAMS_CHUNK):
            write(lo, piece)
        cluster.keep_alive(everyone=True)  # the fsync and rename at the end of the block wait on nobody


def _summary(
    job, cluster: ShardsAndReplicas, loop: BatchLoop, replicas, shards, wall_s, test_loss, test_accuracy
) -> dict:
    spec, times, evaluations = job.spec, cluster.evaluation_seconds, cluster.state
    return {
        "algorithm": "sandblaster",
        "world_size": job.layout.world_size,
        "n_replicas": spec.topology.replicas,
        "n_shards": spec.topology.shards,
        "partitions_per_replica": spec.topology.partitions_per_replica,
        "n_params": job.network.n_params,
        "steps": loop.clock.steps,
        "epochs": loop.clock.epochs,
        "evaluations": evaluations.eval_id,
        "examples_seen": evaluations.examples_evaluated,
        "wall_s": wall_s,
        "examples_per_s": loop.examples_per_s(wall_s),
        "evaluation_s_median": float(np.median(times)) if times else None,
        "final_train_loss": loop.last_loss,
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "stopped_on": loop.stopped_on,
        "lbfgs_statuses": loop.statuses,
        "lbfgs_restarts": loop.restarts,
        **evaluations.totals.as_dict(),  # batches: gradient passes over a batch (evaluations), as in the paper
        "data_batches": loop.batches,
        "late_results_discarded": evaluations.late_results,
        "replica_portions": [r["portions_computed"] for r in replicas],
        "replica_results_counted": [r["results_counted"] for r in replicas],
        "non_finite_pushes": sum(s["non_finite_pushes"] for s in shards),
        "final_checkpoint": loop.final_checkpoint_step,
        "dataset": job.info.path,
        "resumed_from": None if job.resume is None else job.resume.describe(),
    }
