"""A Sandblaster model replica: computes the portions the coordinator hands it.

Loop: wait for the coordinator's next message (TAG_SB_WORK). A message of a new evaluation
first makes the replica fetch that point from every shard (once per evaluation). A message
may carry the verdict on the replica's previous result ("counted": only a result counted by
the coordinator, the first for its portion, is added to the accrued gradient, so a backup's
loser adds nothing) and a new portion to compute. Counted gradients are pushed every
optimizer.push_every counted portions, and at once when the coordinator says "flush" (the
batch is nearly or fully done), each push followed by a small TAG_SB_PUSHED note, so the
coordinator knows when every counted gradient has reached the shards.

Gradients travel as sums over a portion's examples (not means): the shards add them up and
divide by the batch size once.
"""

import time

import numpy as np

from ..comm.control import TAG_SB_BYE, TAG_SB_PUSHED, TAG_SB_RESULT, TAG_SB_WORK, recv_sleeping
from ..comm.param_server import ReplicaEndpoint
from ..fault_injection import FaultInjector
from .liveness import Silence, recv_watched


class PortionWorker:
    """network: the whole model, or this rank's partition of it (model/partitioned.py); then
    partition 0 talks to the coordinator and relays every message to the other partitions over
    replica_comm, and every partition pushes its own block to its own shards (shard_ranges are
    relative to that block; endpoint is a roles/partitions.ShardSubset)."""

    def __init__(
        self,
        job,
        world_comm,
        coordinator: int,
        endpoint: ReplicaEndpoint,
        train_set,
        shard_ranges,
        network=None,
        replica_comm=None,
        silence: Silence | None = None,
    ):
        self.job, self.comm, self.coordinator, self.endpoint = job, world_comm, coordinator, endpoint
        self.network, self.replica_comm = network or job.network, replica_comm
        self.silence = silence  # partition 0's watch on the coordinator
        self.speaks = replica_comm is None or replica_comm.Get_rank() == 0  # to the coordinator
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
            message = self._next_message()
            if message.get("stop"):
                break
            if not message.get("ping"):
                self._handle(message)
        report = {"role": "replica", "replica_id": self.job.role.replica_id, **self.stats}
        if self.speaks:
            self.comm.send(report, dest=self.coordinator, tag=TAG_SB_BYE)
        return report

    def _next_message(self) -> dict:
        if not self.speaks:
            return recv_sleeping(self.replica_comm, 0, TAG_SB_WORK)
        message = recv_watched(self.comm, self.coordinator, TAG_SB_WORK, None, "the coordinator", silence=self.silence)
        if self.replica_comm is None:
            return message
        for partition in range(1, self.replica_comm.Get_size()):
            self.replica_comm.send(message, dest=partition, tag=TAG_SB_WORK)
        return message

    def _handle(self, message: dict) -> None:
        if message["eval"] != self.eval_id:
            self._start_evaluation(message["eval"])
        if message.get("counted"):
            np.add(self.accrued, self.result, out=self.accrued)
            self.unpushed += 1
            self.stats["results_counted"] += 1
        if self.unpushed and (
            self.unpushed >= self.job.spec.optimizer.push_every or message["flush"] or message["portion"] is None
        ):
            self._push()
        if message["portion"] is not None:
            if not self.fetched:
                self._fetch()
            self._compute(message["portion"], *message["rows"])

    def _start_evaluation(self, eval_id: int) -> None:
        """A new point (the accrued gradient is empty: the coordinator ended the last evaluation
        only after every counted portion was pushed); fetched before the first portion."""
        self.eval_id, self.unpushed, self.pushes, self.portions_pushed = eval_id, 0, 0, 0
        self.accrued[:] = 0
        self.fetched = False

    def _fetch(self) -> None:
        for shard_id, part in enumerate(self.ranges):
            self.endpoint.fetch(shard_id, self.params[part])
        self.fetched = True
        self.stats["fetches"] += 1

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
        if not self.speaks:  # every partition has the same loss; partition 0 reports it
            return
        result = {
            "eval": self.eval_id,
            "portion": portion,
            "loss": float(loss) * (stop - start),
            "correct": int(correct),
        }
        self.comm.send(result, dest=self.coordinator, tag=TAG_SB_RESULT)
        if self.inject.duplicates:  # injected: the same result again; it must not count twice
            self.comm.send({**result, "echo": True}, dest=self.coordinator, tag=TAG_SB_RESULT)

    def _push(self) -> None:
        for shard_id, part in enumerate(self.ranges):
            self.endpoint.push(shard_id, self.accrued[part], self.eval_id, self.unpushed)
        self.pushes += 1
        self.portions_pushed += self.unpushed
        self.stats["pushes"] += 1
        self.accrued[:] = 0
        self.unpushed = 0
        if not self.speaks:  # the shards count every partition's pushes themselves
            return
        self.comm.send(
            {"eval": self.eval_id, "pushes": self.pushes, "portions": self.portions_pushed},
            dest=self.coordinator,
            tag=TAG_SB_PUSHED,
        )
