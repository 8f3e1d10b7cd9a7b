"""The minibatch loop every training role shares: limits, metrics, evaluation, progress.

What differs between algorithms (where the parameters live, what happens to a gradient)
comes in as `StepHooks`; the loop itself never touches MPI.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config import JobSpec
from ..data.batches import BatchStream
from ..model.network import Network
from ..runtime import preempt, watchdog
from ..runtime.fault_injection import FaultInjector
from ..runtime.limits import RunClock, fraction_done, limit_reached
from ..runtime.progress import Progress, figures_text

# A training-window line goes to metrics.jsonl about this often (seconds).
METRICS_INTERVAL_S = 1.0
# What summary.json's examples_per_s divides by (its "examples_per_s_covers" entry).
RATE_COVERS = "this invocation's training steps, after kernel warm-up (warm_up_s) and without evaluations"


class StepHooks:
    """Algorithm-specific parts of a step. `grad` (n_params,) is d(mean loss)/d params."""

    def before_step(self, step: int) -> None:
        """Called before computing the gradient of step `step` (0-based): e.g. fetch."""

    def after_step(self, step: int, grad: np.ndarray) -> None:
        """Called with the gradient of step `step`: apply it, accrue it, push it."""

    def checkpoint(self, clock: RunClock) -> None:
        """Called when a checkpoint is due (checkpoint.every_steps / every_seconds)."""

    def final_checkpoint(self, clock: RunClock) -> None:
        """Called once when the run is preempted: commit a checkpoint before leaving."""
        self.checkpoint(clock)


class Window:
    """Running sums of loss and accuracy since the last metrics line."""

    def __init__(self):
        self.last_loss = self.last_accuracy = float("nan")  # means of the last flushed window
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

    def latest(self) -> tuple[float, float]:
        """(loss, accuracy): this window's means, or the last window's while this one is empty
        (NaN before any step: a progress line then leaves them out rather than print 0)."""
        return self.means() if self.batches else (self.last_loss, self.last_accuracy)


@dataclass
class LoopResult:
    clock: RunClock
    last_train_loss: float
    train_s: float  # seconds spent in steps (hooks included), not in evaluation
    examples_seen: int  # since the run began (a resumed run counts from its checkpoint)
    examples_this_run: int  # in this invocation only: what rates divide by train_s
    stopped_on: str


@dataclass
class Reporting:
    """What the lead replica records; other replicas pass None for all. The partitions of a
    partitioned lead all evaluate (together, model-parallel); partition 0 alone records."""

    metrics: object = None  # rundir.MetricsLog
    test_set: tuple | None = None  # (x_test, y_test)
    progress: Progress | None = None
    last_test_accuracy: float = float("nan")  # of the last periodic evaluation, for progress lines
    evaluate: Callable[[np.ndarray, np.ndarray], tuple[float, float]] | None = None  # (x, y) -> (loss,
    # accuracy); default: the loop's own network on its working parameters


def run_loop(
    spec: JobSpec,
    network: Network,
    params: np.ndarray,
    stream: BatchStream,
    hooks: StepHooks,
    report: Reporting,
    first_step: int = 0,
    inject: FaultInjector | None = None,
    agree=None,
) -> LoopResult:
    """Minibatch steps until a run limit; params (n_params,) is the replica's working copy.
    inject: the replica's injected fault (tests only). agree(reason) -> reason: the stop
    decision shared by ranks that must stop on the same step (a partitioned replica's)."""
    grad = np.empty_like(params)
    window, clock = Window(), RunClock(steps=first_step)
    first_examples = stream.examples_seen
    train_s, start, last_metrics, last_ckpt = 0.0, time.perf_counter(), 0.0, 0.0
    if report.progress:
        report.progress.restart_clock(fraction_done(spec.run, clock))  # kernels are warm by now
    reason = stop_reason(spec, clock, agree)
    while reason is None:
        tick = time.perf_counter()
        hooks.before_step(clock.steps)
        x_batch, y_batch = stream.next_batch()
        loss, correct = network.loss_and_grad(params, x_batch, y_batch, grad)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} at step {clock.steps + 1}; lower optimizer.learning_rate"
            )
        hooks.after_step(clock.steps, grad)
        watchdog.beat()
        if inject is not None:
            inject.after_step(clock.steps + 1 - first_step, time.perf_counter() - tick)
        train_s += time.perf_counter() - tick
        window.add(loss, correct, len(y_batch))
        clock.steps, clock.epochs = clock.steps + 1, stream.epoch
        clock.seconds = time.perf_counter() - start
        if report.metrics and clock.seconds - last_metrics >= METRICS_INTERVAL_S:
            last_metrics = clock.seconds
            log_window(report.metrics, window, clock, stream.examples_seen, first_examples, train_s)
        reason = stop_reason(spec, clock, agree)
        # On the last step the role's final evaluation writes the eval line: not twice.
        if reason is None and report.test_set and spec.run.eval_every and clock.steps % spec.run.eval_every == 0:
            _periodic_eval(spec, report, network, params, clock)
        if checkpoint_due(spec, clock, last_ckpt):
            last_ckpt = clock.seconds
            hooks.checkpoint(clock)
        if report.progress and report.progress.due():
            rate = (stream.examples_seen - first_examples) / max(train_s, 1e-9)
            _print_progress(spec, report, window, clock, rate)
    if reason == "preempted":
        hooks.final_checkpoint(clock)
    if report.progress:
        report.progress.finish()
    last_loss = window.means()[0] if window.batches else window.last_loss
    if report.metrics and window.batches:
        log_window(report.metrics, window, clock, stream.examples_seen, first_examples, train_s)
    return LoopResult(clock, last_loss, train_s, stream.examples_seen, stream.examples_seen - first_examples, reason)


def _print_progress(spec: JobSpec, report: Reporting, window: Window, clock: RunClock, rate: float) -> None:
    assert report.progress is not None
    loss, accuracy = window.latest()
    text = figures_text(
        "step", clock.steps, clock.epochs, rate, loss=loss, acc=accuracy, test_acc=report.last_test_accuracy
    )
    report.progress.maybe_print(text, fraction_done(spec.run, clock))


def _periodic_eval(spec: JobSpec, report: Reporting, network: Network, params: np.ndarray, clock: RunClock) -> None:
    assert report.test_set is not None
    x_test, y_test = report.test_set
    eval_n = spec.data.eval_examples or len(y_test)
    x, y = x_test[:eval_n], y_test[:eval_n]
    if report.evaluate:
        loss, accuracy = report.evaluate(x, y)
    else:
        loss, accuracy = network.evaluate(params, x, y, on_batch=watchdog.beat)
    report.last_test_accuracy = accuracy
    if report.metrics is not None:
        record_eval(report.metrics, loss, accuracy, len(y), clock)


def stop_reason(spec: JobSpec, clock: RunClock, agree=None) -> str | None:
    """A run limit reached, or "preempted"; agree(reason): what a replica's partitions agree on."""
    reason = limit_reached(spec.run, clock) or ("preempted" if preempt.requested() else None)
    return agree(reason) if agree else reason


def log_window(
    metrics, window: Window, clock: RunClock, examples_seen: int, first_examples: int, train_s: float
) -> None:
    loss, accuracy = window.means()
    window.last_loss, window.last_accuracy = loss, accuracy
    metrics.write(
        {
            "kind": "train",
            "time_s": round(clock.seconds, 4),
            "step": clock.steps,
            "epoch": round(clock.epochs, 5),
            "examples": examples_seen,
            "train_loss": loss,
            "train_accuracy": accuracy,
            "examples_per_s": (examples_seen - first_examples) / max(train_s, 1e-9),
        }
    )
    window.reset()


def log_eval(metrics, network: Network, params, x, y, clock: RunClock) -> tuple[float, float]:
    loss, accuracy = network.evaluate(params, x, y)
    record_eval(metrics, loss, accuracy, len(y), clock)
    return loss, accuracy


def record_eval(metrics, loss: float, accuracy: float, n_examples: int, clock: RunClock) -> None:
    """One `eval` line of metrics.jsonl."""
    metrics.write(
        {
            "kind": "eval",
            "time_s": round(clock.seconds, 4),
            "step": clock.steps,
            "test_examples": n_examples,
            "test_loss": loss,
            "test_accuracy": accuracy,
        }
    )


def checkpoint_due(spec: JobSpec, clock: RunClock, last_ckpt: float) -> bool:
    every_steps, every_s = spec.checkpoint.every_steps, spec.checkpoint.every_seconds
    return bool((every_steps and clock.steps % every_steps == 0) or (every_s and clock.seconds - last_ckpt >= every_s))
