"""A shard's side of faults.replica_loss = replace.

1. The shard's watch finds a replica's process gone (liveness.ReplicaWatch): the shard drops
   its open push, frees the slots it had claimed (Shard.forget) and tells the lead (ReplicaLost).
2. The lead answers every shard with ReplaceReplica (also those that have not noticed yet):
   each joins the lead in spawning the replacement (comm/rescue.py), a collective over the lead
   and the shards that blocks this serve loop for the spawn (0.2 to 1 s measured), passing the
   lost replica's minibatch steps it applied: the replacement starts from the fewest.
3. From then on the serve loop also serves the replacement over their own communicator:
   fetches at once, pushes (comm/message_endpoint.py) whenever no landing-slot push is open,
   and its ReplicaDone, which counts as the lost replica's.

A replacement that says nothing for faults.watchdog_seconds is hung, as a silent replica is;
before its first word it is starting (imports, kernels, its data part), and has STARTUP_S.
"""

import logging
import time

from ...comm.messages import (
    DONE,
    FETCH,
    FETCHED,
    LOST,
    MESSAGE_PUSH,
    PUSH_TAKEN,
    REPLACE,
    FetchReply,
    Messenger,
    PushTaken,
    ReplicaLost,
)
from ...comm.rescue import spawn_replacement
from ...errors import RankHung

log = logging.getLogger(__name__)
STARTUP_S = 120.0  # the least a replacement is given to say its first word


class Replacement:
    """One replacement as this shard sees it: their communicator and when it last spoke."""

    def __init__(self, replica_id: int, link):
        self.replica_id, self.messenger = replica_id, Messenger(link.comm)
        self.last_heard, self.spoke = time.monotonic(), False
        self.replies: list = []  # FetchReply sends not yet complete (MPI requests)


class Replacements:
    """Every replacement this shard serves, and the lost replicas it has forgotten."""

    def __init__(self, job, messenger: Messenger, shard):
        self.messenger, self.shard = messenger, shard
        self.lead, self.timeout = job.layout.lead_rank, job.spec.faults.watchdog_seconds
        self.members = [*job.layout.ranks_of("shard"), self.lead]
        self.replaced: set[int] = set()  # replicas forgotten here: not judged by the watch again
        self.serving: list[Replacement] = []

    def left(self, replica_id: int) -> None:
        """The watch found the replica's process gone: forget it, ask the lead for a replacement."""
        self._forget(replica_id)
        self.messenger.send(LOST, ReplicaLost(replica_id), self.lead)

    def serve(self, finished: set[int]) -> int:
        """Join the spawns the lead asks for, then serve each replacement; returns the
        requests handled (0: nothing to do now)."""
        for request, _ in self.messenger.receive_all(REPLACE):
            self._join(request.replica_id)
        return sum(self._serve_one(replacement, finished) for replacement in self.serving)

    def _forget(self, replica_id: int) -> None:
        if replica_id not in self.replaced:
            self.replaced.add(replica_id)
            self.shard.forget(replica_id)

    def _join(self, replica_id: int) -> None:
        self._forget(replica_id)  # the lead knows it has left, though our watch may not yet
        log.warning("joining the lead to spawn a replacement for replica %d", replica_id)
        steps = int(self.shard.stats.steps_by_replica[replica_id])  # final: its pushes are dropped
        link, _ = spawn_replacement(self.messenger.comm, self.members, self.lead, replica_id, steps)
        self.serving.append(Replacement(replica_id, link))

    def _serve_one(self, replacement: Replacement, finished: set[int]) -> int:
        messenger, shard, handled = replacement.messenger, self.shard, 0
        for request, source in messenger.receive_all(FETCH):
            part = shard.params[request.offset : request.offset + request.length]
            replacement.replies.append(messenger.post(FETCHED, FetchReply(shard.version, part.copy()), source))
            handled += 1
        replacement.replies = [reply for reply in replacement.replies if not reply.Test()]
        if shard.open is None:
            for push, source in messenger.receive_all(MESSAGE_PUSH):
                shard.apply_message(push.replica_id, push.grad, push.base_version, push.steps, push.offset)
                messenger.send(PUSH_TAKEN, PushTaken(), source)
                handled += 1
        for _ in messenger.receive_all(DONE):
            finished.add(replacement.replica_id)
            handled += 1
        self._judge(replacement, handled, finished)
        return handled

    def _judge(self, replacement: Replacement, handled: int, finished: set[int]) -> None:
        now = time.monotonic()
        if handled or replacement.replica_id in finished:
            replacement.last_heard, replacement.spoke = now, True
            return
        limit = self.timeout if replacement.spoke else max(self.timeout, STARTUP_S)
        if self.timeout and now - replacement.last_heard > limit:
            raise RankHung(
                f"the replacement of replica {replacement.replica_id} has sent shard {self.shard.shard_id} "
                f"nothing for {limit:g} s: it is hung (faults.watchdog_seconds = {self.timeout:g})"
            )
