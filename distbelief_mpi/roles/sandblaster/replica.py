"""A Sandblaster model replica: computes the portions the coordinator hands it.

Loop: wait for the coordinator's next record on the WORK channel (comm/messages.py): Work,
KeepAlive (nothing to do), EvaluateTest (replica 0 only, below) or StopWork. Work of a new
evaluation first makes the replica fetch that point from every shard (once per evaluation).
Work may carry the verdict on the replica's previous result (`counted`: only a result counted
by the coordinator, the first for its portion, is added to the accrued gradient, so a backup's
loser adds nothing) and a new portion to compute. Counted gradients are pushed every
optimizer.push_every counted portions, and at once when the coordinator says `flush` (the
batch is nearly or fully done), each push followed by a small PushesNote, so the coordinator
knows when every counted gradient has reached the shards.

Gradients travel as sums over a portion's examples (not means): the shards add them up and
divide by the batch size once.

EvaluateTest (between evaluations, after the shards have published x): replica 0, which read
the test split at start-up, fetches x (each partition its own block), evaluates it (its
partitions together, model-parallel) and answers with TestFigures on TEST_RESULT. Its params
buffer then holds x, so it refetches before its next portion.
"""

import dataclasses
import time

import numpy as np

from ...comm.messages import (
    FAREWELL,
    PUSHES,
    RESULT,
    TEST_RESULT,
    WORK,
    EvaluateTest,
    Farewell,
    KeepAlive,
    Messenger,
    PortionResult,
    PushesNote,
    StopWork,
    TestFigures,
    Work,
)
from ...comm.replica_endpoint import ReplicaEndpoint
from ...runtime import watchdog
from ...runtime.fault_injection import FaultInjector
from ..liveness import Silence


class PortionWorker:
    """network: the whole model, or this rank's partition of it (model/partitioned.py); then
    partition 0 talks to the coordinator and relays every record to the other partitions
    (partition_messenger: comm/messages.Messenger over the replica's own communicator), and
    every partition pushes its own block to its own shards (shard_ranges are relative to that
    block; endpoint is a roles/partitioned_replica.ShardSubset). silence: partition 0's watch on the
    coordinator (RankLost / RankHung when it exits or stays silent). test_set: (x, y) of the
    test split, on every partition of replica 0 (None elsewhere: it is never asked)."""

    def __init__(
        self,
        job,
        messenger: Messenger,
        coordinator: int,
        endpoint: ReplicaEndpoint,
        train_set,
        shard_ranges,
        network=None,
        partition_messenger: Messenger | None = None,
        silence: Silence | None = None,
        test_set: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        self.job, self.messenger, self.coordinator, self.endpoint = job, messenger, coordinator, endpoint
        self.test_set = test_set
        self.network = network or job.network
        self.partitions = partition_messenger  # to the other partitions of this replica (None: unpartitioned)
        self.silence = silence
        self.talks_to_coordinator = partition_messenger is None or partition_messenger.rank == 0
        self.x_train, self.y_train = train_set  # permuted by run.seed (the coordinator's rows)
        self.ranges = [slice(start, stop) for start, stop in shard_ranges]
        n_params = self.network.n_params
        self.params, self.grad = np.empty(n_params, np.float32), np.empty(n_params, np.float32)
        self.result = np.empty(n_params, np.float32)  # the last computed portion's gradient sum
        self.accrued = np.zeros(n_params, np.float32)  # counted, not yet pushed
        self.inject = FaultInjector(job.spec.faults, job.role.replica_id)
        self.eval_id, self.unpushed, self.pushes, self.portions_pushed = None, 0, 0, 0
        self.fetched = False
        self.stats = {"portions_computed": 0, "results_counted": 0, "fetches": 0, "pushes": 0, "compute_s": 0.0}

    def run(self) -> dict:
        while True:
            record = self._next_record()
            if isinstance(record, StopWork):
                break
            if isinstance(record, EvaluateTest):
                self._evaluate_test(record.n_examples)
            elif not isinstance(record, KeepAlive):
                self._handle(record)
        report = {"role": "replica", "replica_id": self.job.role.replica_id, **self.stats}
        if self.talks_to_coordinator:
            self.messenger.send(FAREWELL, Farewell(report), self.coordinator)
        return report

    def _next_record(self) -> Work | KeepAlive | StopWork | EvaluateTest:
        if not self.talks_to_coordinator:
            assert self.partitions is not None
            return self.partitions.wait(WORK, 0)
        on_wait = None if self.silence is None else self.silence.check
        record = self.messenger.wait(WORK, self.coordinator, on_wait=on_wait)
        if self.silence is not None:
            self.silence.heard_now()
        if self.partitions is not None:
            self.partitions.send_to_all(WORK, record, range(1, self.partitions.size))
        return record

    def _handle(self, work: Work) -> None:
        if work.eval_id != self.eval_id:
            self._start_evaluation(work.eval_id)
        if work.counted:
            np.add(self.accrued, self.result, out=self.accrued)
            self.unpushed += 1
            self.stats["results_counted"] += 1
        if self.unpushed and (
            self.unpushed >= self.job.spec.optimizer.push_every or work.flush or work.portion is None
        ):
            self._push()
        if work.portion is not None:
            if not self.fetched:
                self._fetch()
            start, stop = work.rows
            self._compute(work.portion, start, stop)

    def _start_evaluation(self, eval_id: int) -> None:
        """A new point (the accrued gradient is empty: the coordinator ended the last evaluation
        only after every counted portion was pushed); fetched before the first portion."""
        self.eval_id, self.unpushed, self.pushes, self.portions_pushed = eval_id, 0, 0, 0
        self.accrued[:] = 0
        self.fetched = False

    def _fetch(self) -> None:
        self._fetch_published()
        self.fetched = True
        self.stats["fetches"] += 1

    def _fetch_published(self) -> None:
        """params <- the point the shards publish (this rank's block of it)."""
        for shard_id, part in enumerate(self.ranges):
            self.endpoint.fetch(shard_id, self.params[part])

    def _evaluate_test(self, n_examples: int) -> None:
        """(loss, accuracy) of the published point on the first n_examples test examples (0:
        all), on every partition together; partition 0 answers. The pass's point is gone from
        params afterwards: every earlier Work of the pass came before this record (one ordered
        channel) and the next pass refetches anyway; fetched = False says so."""
        if self.test_set is None:
            raise RuntimeError(f"replica {self.job.role.replica_id} holds no test split; only replica 0 evaluates")
        x_test, y_test = self.test_set
        n = min(n_examples or len(y_test), len(y_test))
        self._fetch_published()
        self.fetched = False
        loss, accuracy = self.network.evaluate(self.params, x_test[:n], y_test[:n], on_batch=watchdog.beat)
        if self.talks_to_coordinator:
            self.messenger.send(TEST_RESULT, TestFigures(float(loss), float(accuracy), n), self.coordinator)

    def _compute(self, portion: int, start: int, stop: int) -> None:
        tick = time.perf_counter()
        loss, correct = self.network.loss_and_grad(
            self.params, self.x_train[start:stop], self.y_train[start:stop], self.grad
        )
        np.multiply(self.grad, np.float32(stop - start), out=self.result)  # mean -> sum over the portion
        seconds = time.perf_counter() - tick
        self.inject.after_step(self.stats["portions_computed"] + 1, seconds)  # a slowed replica sleeps here
        self.stats["compute_s"] += time.perf_counter() - tick
        self.stats["portions_computed"] += 1
        if not self.talks_to_coordinator:  # every partition has the same loss; partition 0 reports it
            return
        result = PortionResult(self.eval_id, portion, float(loss) * (stop - start), int(correct))
        self.messenger.send(RESULT, result, self.coordinator)
        if self.inject.duplicates:  # injected: the same result again; it must not count twice
            self.messenger.send(RESULT, dataclasses.replace(result, echo=True), self.coordinator)

    def _push(self) -> None:
        for shard_id, part in enumerate(self.ranges):
            self.endpoint.push(shard_id, self.accrued[part], self.eval_id, self.unpushed)
        self.pushes += 1
        self.portions_pushed += self.unpushed
        self.stats["pushes"] += 1
        self.accrued[:] = 0
        self.unpushed = 0
        if not self.talks_to_coordinator:  # the shards count every partition's pushes themselves
            return
        self.messenger.send(PUSHES, PushesNote(self.eval_id, self.pushes, self.portions_pushed), self.coordinator)
