"""The lead replica's side of Downpour checkpoints.

When a checkpoint is due it asks every shard (a small point-to-point message) to write its
slice, Adagrad state and counters; it keeps training; as replies arrive (polled after each
step) it records their hashes, and when every shard has replied it writes the manifest,
which commits the checkpoint. Shards write at slightly different moments: an asynchronous
system has no single global instant, and each shard's file is consistent in itself.
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...checkpoint.resume import layout_signature
from ...checkpoint.shard_files import save_shard
from ...checkpoint.store import checkpoint_dir, commit_files
from ...comm.control import Backoff
from ...comm.messages import CHECKPOINT, CHECKPOINT_WRITTEN, CheckpointRequest, CheckpointWritten, Messenger
from ...config import to_toml
from ...job import Job

log = logging.getLogger(__name__)


@dataclass
class PendingCheckpoint:
    """A checkpoint requested from every shard, not yet committed."""

    step: int
    examples_seen: int
    replies: dict[int, CheckpointWritten] = field(default_factory=dict)  # by shard id


class CheckpointCoordinator:
    def __init__(self, job: Job, messenger: Messenger, shard_ranks):
        self.job, self.messenger, self.shard_ranks = job, messenger, list(shard_ranks)
        self.root = job.run_dir / "checkpoints"
        self.pending: PendingCheckpoint | None = None
        self.last_committed = job.resume.step if job.resume else None  # a step's checkpoint exists

    def request(self, step: int, examples_seen: int) -> None:
        if step == self.last_committed:  # e.g. preempted right after a periodic checkpoint: nothing new
            return
        if self.pending is not None:  # checkpoints come faster than shards write them: wait
            log.warning("checkpoint at step %d waits for step %d's to be committed", step, self.pending.step)
            self.finish()
        request = CheckpointRequest(step, str(checkpoint_dir(self.root, step)))
        self.messenger.send_to_all(CHECKPOINT, request, self.shard_ranks)
        self.pending = PendingCheckpoint(step, examples_seen)

    def poll(self) -> None:
        if self.pending is None:
            return
        for reply, _ in self.messenger.receive_all(CHECKPOINT_WRITTEN):
            assert reply.step == self.pending.step, (
                f"a reply for step {reply.step} while committing {self.pending.step}"
            )
            self.pending.replies[reply.shard_id] = reply
        if len(self.pending.replies) == len(self.shard_ranks):
            self._commit()

    def finish(self, timeout: float | None = None) -> bool:
        """Wait (sleeping) until a checkpoint in flight is committed; False if `timeout`
        seconds pass first (the checkpoint stays uncommitted: the previous one is the newest)."""
        wait, deadline = Backoff(), None if timeout is None else time.monotonic() + timeout
        while self.pending is not None:
            self.poll()
            if self.pending is None:
                break
            if deadline is not None and time.monotonic() > deadline:
                log.error("checkpoint at step %d not committed within %.1f s; abandoned", self.pending.step, timeout)
                self.pending = None  # late replies stay unread; the previous checkpoint is the newest
                return False
            wait.sleep()
        return True

    def _commit(self) -> None:
        pending = self.pending
        assert pending is not None
        replies = [pending.replies[shard_id] for shard_id in sorted(pending.replies)]
        meta = {
            "layout": layout_signature(self.job.spec, self.job.layout),
            "job": to_toml(self.job.spec),
            "examples_seen": pending.examples_seen,
            "shard_versions": [reply.version for reply in replies],
        }
        files = {reply.file: reply.sha256 for reply in replies}
        commit_files(self.root, pending.step, files, meta, self.job.spec.checkpoint.keep)
        log.info("committed checkpoint at step %d", pending.step)
        self.last_committed = pending.step
        self.pending = None


def reply_to_checkpoint(
    messenger: Messenger, shard, start: int, stop: int, request: CheckpointRequest, lead_rank: int
) -> None:
    """Shard side: write this shard's part, tell the lead its name and hash."""
    name, sha = save_shard(Path(request.directory), shard, start, stop)
    messenger.send(
        CHECKPOINT_WRITTEN, CheckpointWritten(shard.shard_id, request.step, name, sha, shard.version), lead_rank
    )
