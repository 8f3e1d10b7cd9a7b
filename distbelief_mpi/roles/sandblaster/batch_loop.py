"""The coordinator's batch loop around optim/lbfgs.py: limits, metrics, evaluations, progress,
checkpoints and preemption.

Batches are consecutive windows of optimizer.sandblaster_batch examples over the training split
(shuffled once by run.seed); each runs lbfgs_iterations_per_batch iterations with fresh history.
Checkpoints (roles/sandblaster/checkpoints.py) are taken between iterations when due
(checkpoint.every_steps / every_seconds) and when a preemption signal stops the run; a resumed
run continues inside the same batch, with the same history, at the same iteration. Test
evaluations (run.eval_every) are computed by replica 0 at the shards' x
(cluster.ShardsAndReplicas.test_figures); this loop only writes their metrics line.
"""

import logging
import math
import time

from ...optim.lbfgs import LbfgsOptions, LbfgsRun
from ...optim.portions import cut_portions, default_portion_size
from ...runtime import watchdog
from ...runtime.limits import RunClock, fraction_done, limit_reached
from ...runtime.progress import figures_text, progress_for
from ..loop import checkpoint_due, record_eval, stop_reason
from .checkpoints import CoordinatorCheckpoints
from .cluster import ShardsAndReplicas

log = logging.getLogger(__name__)


class BatchLoop:
    """Runs L-BFGS batch after batch against `cluster` until a run limit, convergence or a
    preemption signal."""

    def __init__(self, job, cluster: ShardsAndReplicas, metrics):
        self.job, self.cluster, self.metrics = job, cluster, metrics
        self.spec, self.n_train = job.spec, job.info.n_train
        self.clock, self.started = RunClock(), time.perf_counter()
        self.progress = progress_for(job)
        self.stopped_on, self.statuses, self.restarts, self.batches = None, [], 0, 0
        self.last_loss = float("nan")  # the batch loss after the last iteration
        self.last_test_accuracy = float("nan")  # of the last evaluation (run.eval_every), for progress lines
        self.current: LbfgsRun | None = None  # the batch's L-BFGS run, between its iterations
        self.checkpoints, self.last_checkpoint_s = CoordinatorCheckpoints(job, cluster), 0.0
        self.final_checkpoint_step: int | None = None  # committed on preemption
        self.resume_lbfgs = self._restore(job.resume.manifest["sandblaster"]) if job.resume else None
        self.examples_at_start = cluster.state.examples_evaluated  # rates count this invocation's examples

    def examples_per_s(self, seconds: float) -> float:
        return (self.cluster.state.examples_evaluated - self.examples_at_start) / max(seconds, 1e-9)

    def run(self) -> None:
        opt = self.spec.optimizer
        size = min(opt.sandblaster_batch or self.n_train, self.n_train)
        n_batches = -(-self.n_train // size)
        portion = opt.portion_examples or default_portion_size(size, len(self.cluster.replica_ranks), 8)
        options = LbfgsOptions(max_iter=10**12 if n_batches == 1 else opt.lbfgs_iterations_per_batch)
        self.stopped_on = limit_reached(self.spec.run, self.clock)  # a resumed run may be done already
        while self.stopped_on is None:
            start = (self.batches % n_batches) * size
            stop = min(self.n_train, start + size)
            portions = [(start + a, start + b) for a, b in cut_portions(stop - start, portion)]
            self.cluster.use_portions(portions)
            log.info("batch %d: examples [%d, %d) in %d portions", self.batches, start, stop, len(portions))
            self.current = LbfgsRun(self.cluster, opt.lbfgs_memory, options, self.after_iteration, self.resume_lbfgs)
            self.resume_lbfgs = None
            result = self.current.run()
            self.current = None
            if not math.isfinite(result.loss):
                raise FloatingPointError(
                    f"the batch loss became {result.loss} at iteration {self.clock.steps + 1}; "
                    "check the data, or add optimizer.l2_penalty"
                )
            self.batches += 1
            self.statuses.append(result.status)
            self.restarts += result.restarts
            if self.stopped_on is None and (n_batches == 1 or result.iterations == 0):
                self.stopped_on = f"converged ({result.status})"  # one batch, or no step possible on one
            self.stopped_on = self.stopped_on or stop_reason(self.spec, self.clock)
        if self.stopped_on == "preempted" and self.final_checkpoint_step is None:
            self.checkpoint(final=True)  # the signal came between batches: resume with the next one
        self.progress.finish()

    def after_iteration(self, result) -> bool:
        """lbfgs()'s callback after each iteration; True stops the run."""
        clock, evaluations = self.clock, self.cluster.state
        clock.steps += 1
        clock.epochs = evaluations.examples_evaluated / self.n_train
        clock.seconds = time.perf_counter() - self.started
        loss = self.last_loss = result.losses[-1]
        self.metrics.write(
            {
                "kind": "train",
                "time_s": round(clock.seconds, 4),
                "step": clock.steps,
                "epoch": round(clock.epochs, 5),
                "examples": evaluations.examples_evaluated,
                "train_loss": loss,
                "evaluations": evaluations.eval_id,
                "examples_per_s": self.examples_per_s(clock.seconds),
            }
        )
        every = self.spec.run.eval_every
        if every and clock.steps % every == 0:
            self.evaluate()
        if self.progress.due():
            rate = self.examples_per_s(clock.seconds)
            text = figures_text(
                "iteration", clock.steps, clock.epochs, rate, loss=loss, test_acc=self.last_test_accuracy
            )
            self.progress.maybe_print(f"{text} evaluations {evaluations.eval_id}", fraction_done(self.spec.run, clock))
        watchdog.beat()
        self.stopped_on = stop_reason(self.spec, clock)
        if self.stopped_on == "preempted" or checkpoint_due(self.spec, clock, self.last_checkpoint_s):
            self.checkpoint(final=self.stopped_on == "preempted")
        return self.stopped_on is not None

    def evaluate(self) -> None:
        """An eval line: x on the first data.eval_examples test examples (0: all), by replica 0."""
        figures = self.cluster.test_figures(self.spec.data.eval_examples)
        record_eval(self.metrics, figures.loss, figures.accuracy, figures.n_examples, self.clock)
        self.last_test_accuracy = figures.accuracy

    def checkpoint(self, final: bool = False) -> None:
        """Commit this moment: inside a batch (self.current is its L-BFGS run) or between batches."""
        inside_batch = self.current is not None
        state = {
            "lbfgs": self.current.snapshot() if inside_batch else None,
            "batches": self.batches,
            "statuses": self.statuses,
            "restarts": self.restarts,
            "last_loss": self.last_loss,
            **self.cluster.state.counters(),  # examples_evaluated, eval_id, late_results, totals
        }
        self.checkpoints.commit(self.clock.steps, state, with_history=inside_batch)
        self.last_checkpoint_s = self.clock.seconds
        log.info("checkpoint committed at iteration %d", self.clock.steps)
        if final:
            self.final_checkpoint_step = self.clock.steps

    def _restore(self, state: dict) -> dict | None:
        """Counters from a checkpoint's "sandblaster" entry; returns the L-BFGS run's state (None:
        the checkpoint was taken between batches, so the next batch starts afresh)."""
        self.clock.steps = self.job.resume.step
        self.batches, self.statuses, self.restarts = state["batches"], list(state["statuses"]), state["restarts"]
        self.last_loss = state["last_loss"]
        self.cluster.state.restore(state)
        self.clock.epochs = self.cluster.state.examples_evaluated / self.n_train
        log.info("resuming at iteration %d of batch %d", self.clock.steps, self.batches)
        return state["lbfgs"]
