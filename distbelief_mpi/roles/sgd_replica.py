"""Single-replica minibatch SGD: one rank holds all parameters and trains on all data.

The reference point the distributed algorithms are measured against (the paper's
"single replica SGD" curve in Fig. 4).
"""

import logging
import math
import time

import numpy as np

from ..checkpoint.store import commit_checkpoint
from ..config import JobSpec, to_toml
from ..data.batches import BatchStream
from ..data.hdf5 import DatasetInfo, read_split
from ..kernels import sgd_update_
from ..limits import RunClock, fraction_done, limit_reached
from ..model.network import Network
from ..progress import Progress
from ..rundir import MetricsLog

log = logging.getLogger(__name__)

# A training-window line goes to metrics.jsonl about this often (seconds).
METRICS_INTERVAL_S = 1.0


class Window:
    """Running sums of loss and accuracy since the last metrics line."""

    def __init__(self):
        self.last_loss = float("nan")   # mean loss of the last flushed window
        self.reset()

    def reset(self):
        self.loss_sum, self.correct, self.examples, self.batches = 0.0, 0, 0, 0

    def add(self, loss: float, correct: int, examples: int):
        self.loss_sum += loss
        self.correct += correct
        self.examples += examples
        self.batches += 1

    def means(self) -> tuple[float, float]:
        return self.loss_sum / max(1, self.batches), self.correct / max(1, self.examples)


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
        clock, window, train_s, reason = _train_loop(spec, network, params, stream, (x_test, y_test),
                                                     metrics, run_dir)
        test_loss, test_accuracy = _log_eval(metrics, network, params, x_test, y_test, clock)
    log.info("stopped on %s after %d steps; test accuracy %.4f", reason, clock.steps, test_accuracy)
    return {
        "algorithm": spec.optimizer.algorithm, "world_size": world_size,
        "n_replicas": spec.topology.replicas, "n_shards": spec.topology.shards,
        "partitions_per_replica": spec.topology.partitions_per_replica,
        "n_params": network.n_params, "steps": clock.steps, "epochs": stream.epoch,
        "examples_seen": stream.examples_seen, "wall_s": time.perf_counter() - started, "train_s": train_s,
        "examples_per_s": stream.examples_seen / max(train_s, 1e-9),
        "final_train_loss": window.last_loss, "test_loss": test_loss, "test_accuracy": test_accuracy,
        "stopped_on": reason, "dataset": info.path,
    }, params


def _train_loop(spec: JobSpec, network: Network, params, stream: BatchStream, test_set, metrics, run_dir):
    """Minibatch SGD until a run limit; returns (clock, last window, seconds in steps, reason)."""
    x_test, y_test = test_set
    eval_n = spec.data.eval_examples or len(y_test)
    grad = np.empty_like(params)
    window, clock, progress = Window(), RunClock(), Progress(spec.run.progress_seconds)
    lr = np.float32(spec.optimizer.learning_rate)
    train_s, start, last_metrics, last_ckpt = 0.0, time.perf_counter(), 0.0, 0.0
    while (reason := limit_reached(spec.run, clock)) is None:
        tick = time.perf_counter()
        x_batch, y_batch = stream.next_batch()
        loss, correct = network.loss_and_grad(params, x_batch, y_batch, grad)
        sgd_update_(params, grad, lr)
        train_s += time.perf_counter() - tick
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at step {clock.steps + 1}; "
                                     "lower optimizer.learning_rate")
        window.add(loss, correct, len(y_batch))
        clock.steps, clock.epochs = clock.steps + 1, stream.epoch
        clock.seconds = time.perf_counter() - start
        if clock.seconds - last_metrics >= METRICS_INTERVAL_S:
            last_metrics = clock.seconds
            _log_window(metrics, window, clock, stream, train_s)
        if spec.run.eval_every and clock.steps % spec.run.eval_every == 0:
            _log_eval(metrics, network, params, x_test[:eval_n], y_test[:eval_n], clock)
        if _checkpoint_due(spec, clock, last_ckpt):
            last_ckpt = clock.seconds
            commit_checkpoint(run_dir / "checkpoints", clock.steps, params,
                              {"examples_seen": stream.examples_seen, "job": to_toml(spec)},
                              spec.checkpoint.keep)
        if progress.due():
            progress.maybe_print(f"step {clock.steps} epoch {clock.epochs:.2f} "
                                 f"{stream.examples_seen / max(train_s, 1e-9):,.0f} ex/s "
                                 f"loss {window.means()[0]:.4f}", fraction_done(spec.run, clock))
    progress.finish()
    if window.batches:
        _log_window(metrics, window, clock, stream, train_s)
    return clock, window, train_s, reason


def _log_window(metrics, window, clock, stream, train_s):
    loss, accuracy = window.means()
    window.last_loss = loss
    metrics.write({"kind": "train", "time_s": round(clock.seconds, 4), "step": clock.steps,
                   "epoch": round(clock.epochs, 5), "examples": stream.examples_seen,
                   "train_loss": loss, "train_accuracy": accuracy,
                   "examples_per_s": stream.examples_seen / max(train_s, 1e-9)})
    window.reset()


def _log_eval(metrics, network, params, x, y, clock) -> tuple[float, float]:
    loss, accuracy = network.evaluate(params, x, y)
    metrics.write({"kind": "eval", "time_s": round(clock.seconds, 4), "step": clock.steps,
                   "test_examples": len(y), "test_loss": loss, "test_accuracy": accuracy})
    return loss, accuracy


def _checkpoint_due(spec: JobSpec, clock: RunClock, last_ckpt: float) -> bool:
    every_steps, every_s = spec.checkpoint.every_steps, spec.checkpoint.every_seconds
    return bool((every_steps and clock.steps % every_steps == 0)
                or (every_s and clock.seconds - last_ckpt >= every_s))
