"""A Downpour SGD model replica (the paper's Algorithm 1.1), one rank per replica.

Every `fetch_every` steps it fetches fresh parameters from every shard; after each
minibatch it applies the gradient to its working copy (params -= alpha * grad) and adds it
to an accrued-gradient buffer; every `push_every` steps it pushes each shard's part of the
accrued gradient into a landing slot there and resets that part. A push the shard refuses (our
previous push there not yet taken, or all its slots busy with other replicas' pushes) is not
waited for: the gradient keeps accruing and goes with the next push, so a replica never stalls
on a busy shard mid-run. With fewer shards than partitions a shard's part is this partition's
block within the shard's slice (roles/partitioned_replica.ShardSubset maps it).

With optimizer.overlap_comm the transfers run in a background thread
(roles/downpour/comm_worker.py) and overlap with the next minibatches. Otherwise, with a shard
on another node (optimizer.transfers = "auto") or when asked ("pipelined"), they advance one
phase per step (comm/pipelined.py), overlapping compute without a thread; else they run inline,
the step's push and the next step's fetch in the same three round trips.
"""

import time

import numpy as np

from ...comm.control import barrier_sleeping
from ...comm.messages import DONE, PREEMPT, WARMSTART, Messenger, PreemptNotice, ReplicaDone, WarmstartOver
from ...comm.pipelined import PipelinedTransfers
from ...comm.replica_endpoint import FetchItem, PushItem, ReplicaEndpoint
from ...config import JobSpec
from ...kernels import sgd_update_
from ...runtime import preempt
from ..loop import StepHooks
from .comm_worker import CommWorker


class DownpourHooks(StepHooks):
    """`on_warmstart_done` (replica 0 only) is called once, after warmstart_steps steps."""

    def __init__(
        self,
        spec: JobSpec,
        endpoint: ReplicaEndpoint,
        shard_ranges,
        params: np.ndarray,
        messenger: Messenger,
        other_replicas: list[int],
        on_warmstart_done=None,
        checkpoints=None,
        stream=None,
        replacer=None,
    ):
        self.spec, self.endpoint, self.params = spec, endpoint, params
        self.on_warmstart_done = on_warmstart_done
        self.checkpoints, self.stream = checkpoints, stream  # the lead's CheckpointCoordinator
        self.replacer = replacer  # the lead's Replacer (faults.replica_loss = replace)
        self.ranges = [slice(start, stop) for start, stop in shard_ranges]
        self.accrued = np.zeros_like(params)  # (n_params,) gradient not yet pushed
        self.accrued_steps = [0] * len(self.ranges)  # minibatch steps in each shard's part
        self.base_versions = [0] * len(self.ranges)  # shard version of our last fetch
        self.accrued_base = [0] * len(self.ranges)  # version the oldest accrued step started from
        self.fetched = False  # no fetch yet in this run (new or resumed)
        self.fetched_for: int | None = None  # the step whose fetch went with the last push
        self.alpha = np.float32(spec.optimizer.learning_rate)
        self.pushes, self.deferred_pushes = 0, 0
        self.worker = CommWorker(endpoint, shard_ranges, len(params)) if spec.optimizer.overlap_comm else None
        self.pipeline = pipelined_transfers(spec, endpoint, self.ranges, len(params)) if not self.worker else None
        self.messenger, self.other_replicas = messenger, other_replicas  # world ranks of the other replicas
        self.preemption_shared = False
        self.final_checkpoint_step: int | None = None

    def fetch_all(self) -> None:
        """A synchronous fetch of every shard (the first one, and every one without overlap)."""
        self.exchange(fetch=True, pushes=[])

    def before_step(self, step):
        if not self.fetched:  # the run's first step, also after a resume: fetch, inline
            self.fetch_all()
            self.fetched = True
        elif step % self.spec.optimizer.fetch_every == 0:
            if self.pipeline is not None:  # a copy that arrived since the last fetch point
                versions = self.pipeline.take_fetch(self.params)
                self.base_versions = versions if versions is not None else self.base_versions
                return
            if self.worker is None:
                if self.fetched_for != step:  # not already fetched with the last push
                    self.fetch_all()
                return
            versions = self.worker.take_fetch(self.params)
            self.base_versions = versions if versions is not None else self.base_versions

    def after_step(self, step, grad):
        sgd_update_(self.params, grad, self.alpha)
        np.add(self.accrued, grad, out=self.accrued)
        for shard_id in range(len(self.ranges)):
            if not self.accrued_steps[shard_id]:  # staleness counts from the oldest accrued step
                self.accrued_base[shard_id] = self.base_versions[shard_id]
            self.accrued_steps[shard_id] += 1
        if self.pipeline is not None:
            self.advance_pipeline(step)
        elif (step + 1) % self.spec.optimizer.push_every == 0:
            if self.worker:
                self.push_in_background()
            else:  # the next step's fetch, if due, goes in the same round trips
                fetch = self.fetched and (step + 1) % self.spec.optimizer.fetch_every == 0
                self.exchange(fetch, self.due_pushes())
                self.fetched_for = step + 1 if fetch else None
        if step + 1 >= self.spec.optimizer.warmstart_steps:
            self.release_warmstart()
        if self.checkpoints:
            self.checkpoints.poll()
        self.share_preemption()
        if self.replacer:
            self.replacer.poll()

    def checkpoint(self, clock):
        if self.checkpoints:
            self.checkpoints.request(clock.steps, self.stream.examples_seen)

    def final_checkpoint(self, clock):
        """Preempted: commit a checkpoint of this moment, all within checkpoint.grace_seconds."""
        if not self.checkpoints:
            return
        deadline = time.monotonic() + self.spec.checkpoint.grace_seconds
        if self.checkpoints.finish(timeout=self.spec.checkpoint.grace_seconds):  # one in flight first
            self.checkpoints.request(clock.steps, self.stream.examples_seen)
            self.checkpoints.finish(timeout=max(0.0, deadline - time.monotonic()))
        self.final_checkpoint_step = (
            self.checkpoints.last_committed if self.checkpoints.last_committed == clock.steps else None
        )

    def share_preemption(self) -> None:
        """A signal may reach only some ranks: the first replica to see one tells the others,
        and a replica told stops after its step as if signalled itself."""
        if preempt.requested():
            if not self.preemption_shared:
                self.messenger.send_to_all(PREEMPT, PreemptNotice(), self.other_replicas)
                self.preemption_shared = True
        elif self.messenger.receive_all(PREEMPT):
            preempt.request()
            self.preemption_shared = True  # the sender has told everyone

    def release_warmstart(self) -> None:
        if self.on_warmstart_done is not None:
            self.on_warmstart_done()
            self.on_warmstart_done = None

    def advance_pipeline(self, step: int) -> None:
        """One phase of every transfer (comm/pipelined.py): a push may start at push points,
        and copies that arrived go into params when the next step is a fetch point."""
        opt = self.spec.optimizer
        fetch_point = self.fetched and (step + 1) % opt.fetch_every == 0
        versions = self.pipeline.advance(
            self.accrued,
            self.accrued_steps,
            self.accrued_base,
            claim=(step + 1) % opt.push_every == 0,
            params=self.params if fetch_point else None,
        )
        self.base_versions = versions if versions is not None else self.base_versions

    def stop_pipeline(self) -> None:
        """Finish the pushes under way; afterwards transfers are synchronous."""
        if self.pipeline is not None:
            self.pipeline.drain(self.accrued, self.accrued_steps, self.accrued_base)
            self.pushes += self.pipeline.pushes
            self.deferred_pushes += self.pipeline.deferred
            self.pipeline = None

    def push_in_background(self) -> None:
        fresh = self.worker.try_push(self.accrued, self.accrued_steps, self.accrued_base)
        if fresh is None:
            self.deferred_pushes += sum(1 for steps in self.accrued_steps if steps)  # per shard, as inline
            return
        self.accrued, self.accrued_steps = fresh, [0] * len(self.ranges)

    def stop_worker(self) -> None:
        """Let the background pushes finish; afterwards transfers run inline."""
        if self.worker is not None:
            self.worker.close()
            self.pushes += self.worker.pushes
            self.worker = None

    def due_pushes(self) -> list[PushItem]:
        """Each shard's accrued part with at least one step in it (shard ids: local indices)."""
        return [
            PushItem(shard_id, self.accrued[part], self.accrued_base[shard_id], self.accrued_steps[shard_id])
            for shard_id, part in enumerate(self.ranges)
            if self.accrued_steps[shard_id]
        ]

    def exchange(self, fetch: bool, pushes: list[PushItem]) -> None:
        """Post the pushes the shards accept (the others keep accruing) and, if `fetch`, fetch
        every shard's parameters: all in the same three round trips (comm/replica_endpoint.py)."""
        fetches = [FetchItem(shard_id, self.params[part]) for shard_id, part in enumerate(self.ranges)] if fetch else []
        posted, versions = self.endpoint.exchange(pushes, fetches)
        for push, done in zip(pushes, posted):
            if done:
                self._pushed(push.shard_id)
            else:
                self.deferred_pushes += 1
        if fetch:
            self.base_versions = versions

    def push_all(self, wait: bool) -> None:
        """Push each shard's accrued part; with wait=False skip (keep accruing) busy shards."""
        if wait:
            pushes = self.due_pushes()
            self.endpoint.push_all(pushes)
            for push in pushes:
                self._pushed(push.shard_id)
        else:
            self.exchange(False, self.due_pushes())

    def _pushed(self, shard_id: int) -> None:
        self.pushes += 1
        self.accrued[self.ranges[shard_id]] = 0
        self.accrued_steps[shard_id] = 0


def pipelined_transfers(spec: JobSpec, endpoint, ranges: list[slice], n_params: int) -> PipelinedTransfers | None:
    """Split-phase transfers where optimizer.transfers asks for them. "auto": for an unpartitioned
    replica with a shard on another node, where each synchronous round trip costs a network
    latency plus the shard's wake-up, often more than a step. A partitioned replica's step waits on
    its own exchanges between partitions anyway; there pipelining bought 1.6x the examples/s but
    cost 10 points of accuracy after 270 steps (docs/multihost.md), so auto keeps it inline."""
    mode = spec.optimizer.transfers
    if mode == "inline":  # before looking at windows: a replacement replica has none (replacement.py)
        return None
    pieces = endpoint.pieces(ranges)  # (shard id, offset, start, length)
    remote = any(not endpoint.inner.windows.on_my_node(shard_id) for shard_id, *_ in pieces)
    auto = remote and spec.topology.partitions_per_replica == 1
    if mode == "auto" and not auto:
        return None
    return PipelinedTransfers(endpoint.inner, pieces, n_params)


def finish_replica(messenger: Messenger, hooks: DownpourHooks, shard_ranks, partners_comm=None) -> None:
    """Push what is left (waiting for free slots), then tell our shards we are done.
    partners_comm (a partitioned replica's): its partitions say done together, after the lead's
    last checkpoint is committed, so no partition's shards stop serving checkpoint requests early."""
    hooks.release_warmstart()  # a run shorter than the warmstart must not strand the others
    hooks.share_preemption()  # a replica stopped by a signal tells the others before leaving
    if hooks.checkpoints:  # a periodic checkpoint in flight: wait, within the grace time if preempted
        hooks.checkpoints.finish(timeout=hooks.spec.checkpoint.grace_seconds if preempt.requested() else None)
    if partners_comm is not None:
        barrier_sleeping(partners_comm)
    hooks.stop_worker()
    hooks.stop_pipeline()
    hooks.push_all(wait=True)
    messenger.send_to_all(DONE, ReplicaDone(hooks.endpoint.replica_id), shard_ranks)


def wait_for_warmstart(messenger: Messenger, replica0_rank: int) -> None:
    messenger.wait(WARMSTART, replica0_rank)


def release_warmstart(messenger: Messenger, waiting_ranks) -> None:
    """Replica 0 (its partition 0) lets every rank of the other replicas start."""
    messenger.send_to_all(WARMSTART, WarmstartOver(), waiting_ranks)
