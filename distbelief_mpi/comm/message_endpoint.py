"""A replacement replica's side of the parameter server: ReplicaEndpoint's calls over messages.

A replacement joins the lead and the shards through a communicator of its own (rescue.py) and
cannot use the shards' windows, which every other rank created over the job's world
(roles/downpour/replacement.py says why new windows are not made instead). So it pushes and
fetches with two-sided messages on that communicator, with ReplicaEndpoint's rules:

- push: a MessagePush to the shard, at most one in flight per shard. The shard applies it
  with its server rule, as a landing-slot push, and answers PushTaken; until then a new push
  to that shard is refused (the gradient keeps accruing), so a slow shard is never flooded.
- fetch: a FetchRequest to a shard, answered with a FetchReply (its published parameters and
  their version; a shard is single-threaded, so the copy is consistent). Asked one fetch point
  ahead: each fetch point takes the reply to the request made at the one before (_take_fetch).
"""

import time
from collections.abc import Sequence

import numpy as np

from ..errors import RankHung
from .control import Backoff
from .messages import FETCH, FETCHED, MESSAGE_PUSH, PUSH_TAKEN, FetchRequest, MessagePush, Messenger
from .replica_endpoint import FetchItem, PushItem


class MessageEndpoint:
    """shard_ranks[s]: shard s's rank in messenger's communicator. A shard that answers
    nothing for `hung_after` seconds (0: never judged) while we wait is hung."""

    def __init__(self, messenger: Messenger, shard_ranks: Sequence[int], replica_id: int, hung_after: float = 0.0):
        self.messenger, self.shard_ranks, self.replica_id = messenger, list(shard_ranks), replica_id
        self.hung_after = hung_after
        self.in_flight: list = [None] * len(self.shard_ranks)  # a push's send request, till its PushTaken
        self.asked: list[tuple[int, int] | None] = [None] * len(self.shard_ranks)  # a fetch request out
        self.versions = [0] * len(self.shard_ranks)  # the version of each shard's last fetched copy
        self.fetch_retries = 0  # ReplicaEndpoint's figure; a message fetch is never torn

    def fetch(self, shard_id: int, out: np.ndarray, offset: int = 0) -> int:
        return self.exchange([], [FetchItem(shard_id, out, offset)])[1][0]

    def slot_free(self, shard_id: int) -> bool:
        self._collect_taken()
        return self.in_flight[shard_id] is None

    def try_push(self, shard_id: int, grad: np.ndarray, base_version: int, steps: int, offset: int = 0) -> bool:
        return self.exchange([PushItem(shard_id, grad, base_version, steps, offset)], [])[0][0]

    def push(self, shard_id: int, grad: np.ndarray, base_version: int, steps: int, offset: int = 0) -> None:
        self.push_all([PushItem(shard_id, grad, base_version, steps, offset)])

    def push_all(self, pushes: Sequence[PushItem]) -> None:
        """Send every push, waiting (sleeping) for each shard's previous one to be taken."""
        waiting, wait, started = list(pushes), Backoff(), time.monotonic()
        while waiting:
            posted, _ = self.exchange(waiting, [])
            waiting = [push for push, done in zip(waiting, posted) if not done]
            if waiting:
                self._check_hung(started, waiting[0].shard_id)
                wait.sleep()
        for shard_id in range(len(self.shard_ranks)):  # the last pushes are applied before we say done
            self._await_taken(shard_id)

    def exchange(self, pushes: Sequence[PushItem], fetches: Sequence[FetchItem]) -> tuple[list[bool], list[int]]:
        """Send the pushes whose shard has taken our previous one, and fetch. Returns (sent?,
        per push) and (version, per fetch)."""
        self._collect_taken()
        posted = [self._send_push(push) for push in pushes]
        versions = [self._take_fetch(fetch) for fetch in fetches]
        return posted, versions

    def _send_push(self, push: PushItem) -> bool:
        if self.in_flight[push.shard_id] is not None:
            return False
        record = MessagePush(self.replica_id, np.array(push.grad), push.base_version, push.steps, push.offset)
        self.in_flight[push.shard_id] = self.messenger.post(MESSAGE_PUSH, record, self.shard_ranks[push.shard_id])
        return True

    def _take_fetch(self, fetch: FetchItem) -> int:
        """Fetch ahead, as optimizer.overlap_comm does: each fetch point takes the reply to the
        request made at the one before, if it has come (else `out` keeps the replica's own
        parameters), and asks for the next. A shard's reply waits for its serve loop to wake
        (up to its 2 ms backoff), longer than a small model's step. The first fetch waits."""
        shard_id, rank, part = fetch.shard_id, self.shard_ranks[fetch.shard_id], (fetch.offset, len(fetch.out))
        if self.asked[shard_id] != part:
            if self.asked[shard_id] is not None:  # another part was asked for: that reply is not ours
                self.messenger.wait(FETCHED, rank, self._hung_check(shard_id))
            self._ask(shard_id, part)
            self._copy(fetch, self.messenger.wait(FETCHED, rank, self._hung_check(shard_id)))
        elif self.messenger.waiting(FETCHED, rank):
            self._copy(fetch, self.messenger.receive(FETCHED, rank))
        else:
            return self.versions[shard_id]
        self._ask(shard_id, part)
        return self.versions[shard_id]

    def _ask(self, shard_id: int, part: tuple[int, int]) -> None:
        self.messenger.send(FETCH, FetchRequest(*part), self.shard_ranks[shard_id])
        self.asked[shard_id] = part

    def _copy(self, fetch: FetchItem, reply) -> None:
        np.copyto(fetch.out, reply.params)
        self.versions[fetch.shard_id] = reply.version

    def _collect_taken(self) -> None:
        for _, source in self.messenger.receive_all(PUSH_TAKEN):
            self._taken(self.shard_ranks.index(source))

    def _await_taken(self, shard_id: int) -> None:
        if self.in_flight[shard_id] is not None:
            self.messenger.wait(PUSH_TAKEN, self.shard_ranks[shard_id], self._hung_check(shard_id))
            self._taken(shard_id)

    def _taken(self, shard_id: int) -> None:
        """The shard has applied the push, so it has received it: its send is complete."""
        self.in_flight[shard_id].wait()
        self.in_flight[shard_id] = None

    def _hung_check(self, shard_id: int):
        started = time.monotonic()
        return lambda: self._check_hung(started, shard_id)

    def _check_hung(self, started: float, shard_id: int) -> None:
        if self.hung_after and time.monotonic() - started > self.hung_after:
            raise RankHung(
                f"shard {shard_id} has answered replacement replica {self.replica_id} nothing for {self.hung_after:g} s"
            )
