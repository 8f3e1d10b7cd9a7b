"""Sandblaster L-BFGS on every rank: the coordinator optimises, shards hold the vectors,
replicas compute portions (docs/sandblaster.md).

Rank 0 is the coordinator. It runs optim/lbfgs.py against roles/sandblaster_cluster.py and
never holds the parameters while optimising; it gathers them only to evaluate on the test
split (run.eval_every, and at the end) and to write params.h5. Batches: consecutive windows
of optimizer.sandblaster_batch examples over the training split shuffled once by run.seed;
each runs lbfgs_iterations_per_batch iterations with fresh history (one batch, the whole
split, runs until a run limit or convergence). A step is one L-BFGS iteration.
"""

import logging
import math
import time
from functools import partial

import numpy as np

from .. import preempt, watchdog
from ..comm.control import TAG_SB_BYE, TAG_SB_PUSHED, TAG_SB_RESULT, barrier_sleeping, receive_all
from ..comm.param_server import ParamServerWindows, ReplicaEndpoint
from ..comm.world import abort_job
from ..data.hdf5 import read_split
from ..limits import RunClock, fraction_done, limit_reached
from ..optim.lbfgs import LbfgsOptions, lbfgs
from ..optim.portions import cut_portions
from ..optim.vector_ops import ShardVectors
from ..progress import Progress
from ..rundir import MetricsLog
from ..watchdog import Watchdog
from .downpour import warm_up
from .liveness import Peers
from .partitions import ShardSubset, initial_params, own_shards, parameter_order, partition_network, replica_comm
from .sandblaster_cluster import MpiCluster
from .sandblaster_replica import PortionWorker
from .sandblaster_shard import GradientSink, serve_commands

log = logging.getLogger(__name__)


def run_sandblaster(job, world_comm, world_rank: int):
    """Returns (summary, final params) on the coordinator, (None, None) elsewhere."""
    layout, role = job.layout, job.role
    shard_ranks = layout.ranks_of("shard")
    peers = Peers.gather(world_comm)
    comm = replica_comm(world_comm, role, job.spec.topology.partitions_per_replica)
    windows = ParamServerWindows(world_comm, shard_ranks, layout.shard_ranges, job.spec.topology.replicas,
                                 role.shard_id if role.role == "shard" else -1)
    guard = Watchdog(job.spec.faults.watchdog_seconds, f"rank {world_rank} ({role.label})",
                     partial(abort_job, world_comm))
    outcome = (None, None)
    if role.role == "shard":
        _serve(job, windows, world_comm, guard)
    elif role.role == "replica":
        _work(job, windows, world_comm, guard, comm)
    else:
        speakers = [layout.rank_of(r, 0) for r in range(job.spec.topology.replicas)]   # partition 0 of each
        outcome = _coordinate(job, world_comm, shard_ranks, speakers, guard, peers)
    barrier_sleeping(world_comm)
    windows.close()
    return outcome


def _serve(job, windows, world_comm, guard) -> None:
    start, stop = job.layout.shard_ranges[job.role.shard_id]
    initial = initial_params(job)[start:stop]
    sink = GradientSink(windows, job.role.shard_id, job.spec.optimizer, initial)
    sink.warm_up()
    vectors = ShardVectors(stop - start, job.spec.optimizer.lbfgs_memory)
    vectors.load("x", initial)
    barrier_sleeping(world_comm)
    with guard:
        serve_commands(world_comm, job.layout.lead_rank, sink, vectors)


def _work(job, windows, world_comm, guard, comm) -> None:
    x_train, y_train = read_split(job.info.path, "train")
    order = np.random.default_rng(job.spec.run.seed).permutation(len(y_train))   # the coordinator's rows
    train_set = (x_train[order], y_train[order])
    warm_up(job.network, train_set[0][:2], train_set[1][:2])
    shard_ids, local_ranges = own_shards(job)
    endpoint = ShardSubset(ReplicaEndpoint(windows, job.role.replica_id, hung_after=job.spec.faults.watchdog_seconds),
                           shard_ids)
    network = partition_network(job, comm) if comm is not None else None
    barrier_sleeping(world_comm)
    with guard:
        PortionWorker(job, world_comm, job.layout.lead_rank, endpoint, train_set, local_ranges, network, comm).run()


def _coordinate(job, world_comm, shard_ranks, replica_ranks, guard, peers):
    cluster = MpiCluster(world_comm, shard_ranks, replica_ranks, job.spec.optimizer, peers,
                         job.spec.faults.watchdog_seconds, parameter_order(job))
    parts = job.spec.topology.partitions_per_replica
    cluster.partners = {r: [job.layout.rank_of(r, p) for p in range(1, parts)] for r in range(len(replica_ranks))}
    x_test, y_test = read_split(job.info.path, "test")
    barrier_sleeping(world_comm)
    with guard, MetricsLog(job.run_dir) as metrics:
        started = time.perf_counter()
        driver = Driver(job, cluster, metrics, (x_test, y_test))
        driver.run()
        wall_s = time.perf_counter() - started
        final = cluster.gather("x")
        replicas, shards = _stop_everyone(cluster)
        test_loss, test_accuracy = job.network.evaluate(final, x_test, y_test)
        metrics.write({"kind": "eval", "time_s": round(wall_s, 4), "step": driver.clock.steps,
                       "test_examples": len(y_test), "test_loss": test_loss, "test_accuracy": test_accuracy})
    return _summary(job, cluster, driver, replicas, shards, wall_s, test_loss, test_accuracy), final


class Driver:
    """The batch loop around lbfgs(): limits, metrics, evaluations, progress, preemption."""

    def __init__(self, job, cluster: MpiCluster, metrics, test_set):
        self.job, self.cluster, self.metrics, self.test_set = job, cluster, metrics, test_set
        self.spec, self.n_train = job.spec, job.info.n_train
        self.clock, self.started = RunClock(), time.perf_counter()
        self.progress = Progress(self.spec.run.progress_seconds if job.progress else 0)
        self.stopped_on, self.statuses, self.restarts, self.batches = None, [], 0, 0
        self.last_loss = float("nan")     # the batch loss after the last iteration

    def run(self) -> None:
        opt = self.spec.optimizer
        size = min(opt.sandblaster_batch or self.n_train, self.n_train)
        n_batches = -(-self.n_train // size)
        portion = opt.portion_examples or max(1, size // (8 * len(self.cluster.replica_ranks)))
        options = LbfgsOptions(max_iter=10**12 if n_batches == 1 else opt.lbfgs_iterations_per_batch)
        while self.stopped_on is None:
            start = (self.batches % n_batches) * size
            stop = min(self.n_train, start + size)
            self.cluster.portions = [(start + a, start + b) for a, b in cut_portions(stop - start, portion)]
            log.info("batch %d: examples [%d, %d) in %d portions", self.batches, start, stop, len(self.cluster.portions))
            result = lbfgs(self.cluster, opt.lbfgs_memory, options, self.after_iteration)
            if not math.isfinite(result.loss):
                raise FloatingPointError(f"the batch loss became {result.loss} at iteration {self.clock.steps + 1}; "
                                         "check the data, or add optimizer.l2_penalty")
            self.batches += 1
            self.statuses.append(result.status)
            self.restarts += result.restarts
            if self.stopped_on is None and (n_batches == 1 or result.iterations == 0):
                self.stopped_on = f"converged ({result.status})"     # one batch, or no step possible on one
            self.stopped_on = self.stopped_on or limit_reached(self.spec.run, self.clock) or \
                ("preempted" if preempt.requested() else None)
        self.progress.finish()

    def after_iteration(self, result) -> bool:
        """lbfgs()'s callback after each iteration; True stops the run."""
        clock = self.clock
        clock.steps += 1
        clock.epochs = self.cluster.examples_evaluated / self.n_train
        clock.seconds = time.perf_counter() - self.started
        loss = self.last_loss = result.losses[-1]
        self.metrics.write({"kind": "train", "time_s": round(clock.seconds, 4), "step": clock.steps,
                            "epoch": round(clock.epochs, 5), "examples": self.cluster.examples_evaluated,
                            "train_loss": loss, "evaluations": self.cluster.eval_id,
                            "examples_per_s": self.cluster.examples_evaluated / max(clock.seconds, 1e-9)})
        every = self.spec.run.eval_every
        if every and clock.steps % every == 0:
            self.evaluate()
        if self.progress.due():
            self.progress.maybe_print(f"iteration {clock.steps} epoch {clock.epochs:.2f} loss {loss:.4f} "
                                      f"({self.cluster.eval_id} evaluations)", fraction_done(self.spec.run, clock))
        watchdog.beat()
        self.stopped_on = limit_reached(self.spec.run, clock) or ("preempted" if preempt.requested() else None)
        return self.stopped_on is not None

    def evaluate(self) -> None:
        x_test, y_test = self.test_set
        eval_n = self.spec.data.eval_examples or len(y_test)
        loss, accuracy = self.job.network.evaluate(self.cluster.gather("x"), x_test[:eval_n], y_test[:eval_n])
        self.metrics.write({"kind": "eval", "time_s": round(self.clock.seconds, 4), "step": self.clock.steps,
                            "test_examples": eval_n, "test_loss": loss, "test_accuracy": accuracy})


def _stop_everyone(cluster: MpiCluster) -> tuple[list[dict], list[dict]]:
    """Replicas say goodbye with their statistics (late results are dropped); then the shards."""
    cluster.stop_replicas()
    replicas = [cluster.receive(rank, TAG_SB_BYE, f"replica {i}") for i, rank in enumerate(cluster.replica_ranks)]
    cluster.late_results += len(receive_all(cluster.comm, TAG_SB_RESULT))
    receive_all(cluster.comm, TAG_SB_PUSHED)
    return replicas, cluster.shard_call(("stop",))


def _summary(job, cluster: MpiCluster, driver: Driver, replicas, shards, wall_s, test_loss, test_accuracy) -> dict:
    spec, times = job.spec, cluster.evaluation_seconds
    return {
        "algorithm": "sandblaster", "world_size": job.layout.world_size, "n_replicas": spec.topology.replicas,
        "n_shards": spec.topology.shards, "partitions_per_replica": spec.topology.partitions_per_replica,
        "n_params": job.network.n_params, "steps": driver.clock.steps, "epochs": driver.clock.epochs,
        "evaluations": cluster.eval_id, "examples_seen": cluster.examples_evaluated, "wall_s": wall_s,
        "examples_per_s": cluster.examples_evaluated / max(wall_s, 1e-9),
        "evaluation_s_median": float(np.median(times)) if times else None,
        "final_train_loss": driver.last_loss, "test_loss": test_loss, "test_accuracy": test_accuracy,
        "stopped_on": driver.stopped_on, "lbfgs_statuses": driver.statuses, "lbfgs_restarts": driver.restarts,
        **cluster.totals.as_dict(),          # batches: gradient passes over a batch (evaluations), as in the paper
        "data_batches": driver.batches, "late_results_discarded": cluster.late_results,
        "replica_portions": [r["portions_computed"] for r in replicas],
        "replica_results_counted": [r["results_counted"] for r in replicas],
        "non_finite_pushes": sum(s["non_finite_pushes"] for s in shards),
        "final_checkpoint": None, "resumed_from": None, "dataset": job.info.path,
    }
