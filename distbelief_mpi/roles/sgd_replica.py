"""Single-replica minibatch SGD: one rank holds all parameters and trains on all data.

The reference point the distributed algorithms are measured against (the paper's
"single replica SGD" curve in Fig. 4).
"""

import logging
import time

import numpy as np

from ..checkpoint.store import commit_checkpoint
from ..config import JobSpec, to_toml
from ..data.batches import BatchStream
from ..data.hdf5 import DatasetInfo, read_split
from ..kernels import sgd_update_
from ..model.network import Network
from ..progress import Progress
from ..rundir import MetricsLog
from .loop import Reporting, StepHooks, log_eval, run_loop

log = logging.getLogger(__name__)


class LocalSgd(StepHooks):
    """params -= learning_rate * grad after every step; checkpoints hold the whole vector."""

    def __init__(self, spec: JobSpec, params: np.ndarray, stream: BatchStream, run_dir):
        self.spec, self.params, self.stream, self.run_dir = spec, params, stream, run_dir
        self.lr = np.float32(spec.optimizer.learning_rate)

    def after_step(self, step, grad):
        sgd_update_(self.params, grad, self.lr)

    def checkpoint(self, clock):
        commit_checkpoint(self.run_dir / "checkpoints", clock.steps, self.params,
                          {"examples_seen": self.stream.examples_seen, "job": to_toml(self.spec)},
                          self.spec.checkpoint.keep)


def train_sgd(spec: JobSpec, info: DatasetInfo, network: Network, run_dir, world_size: int
              ) -> tuple[dict, np.ndarray]:
    """Train to the run limits; write metrics and checkpoints; return (summary, final params)."""
    started = time.perf_counter()
    x_train, y_train = read_split(info.path, "train")
    x_test, y_test = read_split(info.path, "test")
    params = network.init_params(spec.run.seed)
    stream = BatchStream(x_train, y_train, spec.optimizer.batch_size, spec.run.seed, replica_id=0)
    log.info("training %d parameters on %d examples", network.n_params, len(y_train))
    with MetricsLog(run_dir) as metrics:
        report = Reporting(metrics, (x_test, y_test), Progress(spec.run.progress_seconds))
        result = run_loop(spec, network, params, stream, LocalSgd(spec, params, stream, run_dir), report)
        test_loss, test_accuracy = log_eval(metrics, network, params, x_test, y_test, result.clock)
    log.info("stopped on %s after %d steps; test accuracy %.4f", result.stopped_on, result.clock.steps,
             test_accuracy)
    return {
        "algorithm": spec.optimizer.algorithm, "world_size": world_size,
        "n_replicas": spec.topology.replicas, "n_shards": spec.topology.shards,
        "partitions_per_replica": spec.topology.partitions_per_replica,
        "n_params": network.n_params, "steps": result.clock.steps, "epochs": stream.epoch,
        "examples_seen": result.examples_seen, "wall_s": time.perf_counter() - started,
        "train_s": result.train_s, "examples_per_s": result.examples_seen / max(result.train_s, 1e-9),
        "final_train_loss": result.last_train_loss, "test_loss": test_loss, "test_accuracy": test_accuracy,
        "stopped_on": result.stopped_on, "dataset": info.path,
    }, params
