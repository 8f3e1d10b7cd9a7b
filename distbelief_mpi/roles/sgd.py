"""Single-replica minibatch SGD: one rank holds all parameters and trains on all data.

The reference point the distributed algorithms are measured against (the paper's
"single replica SGD" curve in Fig. 4).
"""

import logging
import time

import numpy as np

from ..checkpoint.params_file import load_params
from ..checkpoint.resume import layout_signature
from ..checkpoint.store import commit_checkpoint, newest_committed_step
from ..comm.world import abort_world
from ..config import to_toml
from ..data.batches import BatchStream, open_replica_stream
from ..data.hdf5 import read_split
from ..errors import CheckpointError
from ..kernels import sgd_update_
from ..model.warm_up import warm_up_kernels
from ..runtime.fault_injection import FaultInjector
from ..runtime.peak_memory import peak_rss_bytes
from ..runtime.processes import rank_label
from ..runtime.progress import progress_for
from ..runtime.rundir import MetricsLog
from ..runtime.watchdog import Watchdog
from .loop import RATE_COVERS, Reporting, StepHooks, log_eval, run_loop

log = logging.getLogger(__name__)


class LocalSgd(StepHooks):
    """params -= learning_rate * grad after every step. A checkpoint holds the whole vector
    and the batch stream's exact position, so a resumed run repeats the same steps."""

    def __init__(self, job, params: np.ndarray, stream: BatchStream):
        self.job, self.params, self.stream = job, params, stream
        self.lr = np.float32(job.spec.optimizer.learning_rate)
        self.final_checkpoint_step: int | None = None

    def after_step(self, step, grad):
        sgd_update_(self.params, grad, self.lr)

    def final_checkpoint(self, clock):
        if newest_committed_step(self.job.run_dir / "checkpoints") != clock.steps:  # else it exists already
            self.checkpoint(clock)
        self.final_checkpoint_step = clock.steps

    def checkpoint(self, clock):
        meta = {
            "examples_seen": self.stream.examples_seen,
            "stream": self.stream.state(),
            "layout": layout_signature(self.job.spec, self.job.layout),
            "job": to_toml(self.job.spec),
        }
        commit_checkpoint(
            self.job.run_dir / "checkpoints", clock.steps, self.params, meta, self.job.spec.checkpoint.keep
        )


def train_sgd(job, world_size: int) -> tuple[dict, np.ndarray]:
    """Train to the run limits; write metrics and checkpoints; return (summary, final params)."""
    spec, info, network = job.spec, job.info, job.network
    started = time.perf_counter()
    x_test, y_test = read_split(info.path, "test")
    params = load_params(job.init_from)[0] if job.init_from else network.init_params(spec.run.seed)
    with (
        open_replica_stream(
            info.path, info.n_train, 0, 1, spec.optimizer.batch_size, spec.run.seed, spec.data.chunk_examples
        ) as stream,
        MetricsLog(job.run_dir) as metrics,
    ):
        first_step = _resume(job, params, stream) if job.resume else 0
        log.info("training %d parameters on %d examples from step %d", network.n_params, stream.n_examples, first_step)
        report = Reporting(metrics, (x_test, y_test), progress_for(job))
        hooks = LocalSgd(job, params, stream)
        warm_up_s = _warm_up(network)
        with Watchdog(spec.faults.watchdog_seconds, rank_label(0, job.role.label), abort_world):
            result = run_loop(spec, network, params, stream, hooks, report, first_step, FaultInjector(spec.faults, 0))
        test_loss, test_accuracy = log_eval(metrics, network, params, x_test, y_test, result.clock)
    log.info("stopped on %s after %d steps; test accuracy %.4f", result.stopped_on, result.clock.steps, test_accuracy)
    return {
        "algorithm": spec.optimizer.algorithm,
        "world_size": world_size,
        "n_replicas": spec.topology.replicas,
        "n_shards": spec.topology.shards,
        "partitions_per_replica": spec.topology.partitions_per_replica,
        "n_params": network.n_params,
        "steps": result.clock.steps,
        "epochs": stream.epoch,
        "examples_seen": result.examples_seen,
        "wall_s": time.perf_counter() - started,
        "train_s": result.train_s,
        "examples_per_s": result.examples_this_run / max(result.train_s, 1e-9),
        "examples_per_s_covers": RATE_COVERS,
        "warm_up_s": warm_up_s,
        "final_train_loss": result.last_train_loss,
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "stopped_on": result.stopped_on,
        "dataset": info.path,
        "final_checkpoint": hooks.final_checkpoint_step,
        "peak_rss_bytes": {"replica": peak_rss_bytes()},  # the one rank, after its final evaluation
        "resumed_from": None
        if job.resume is None
        else {"step": job.resume.step, "checkpoint": str(job.resume.directory)},
    }, params


def _warm_up(network) -> float:
    """Compile (or load) the kernels before the clock starts; returns the seconds it took."""
    tick = time.perf_counter()
    warm_up_kernels(network.layers)
    return time.perf_counter() - tick


def _resume(job, params: np.ndarray, stream: BatchStream) -> int:
    """Load the checkpoint's parameters and batch position into params and stream; return its step."""
    saved, _ = load_params(job.resume.directory / "params.h5")
    if len(saved) != len(params):
        raise CheckpointError(f"{job.resume.directory}: holds {len(saved)} parameters, the model has {len(params)}")
    params[:] = saved
    stream.restore(job.resume.manifest["stream"])
    return job.resume.step
