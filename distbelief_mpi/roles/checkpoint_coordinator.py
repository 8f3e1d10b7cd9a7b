"""The lead replica's side of Downpour checkpoints.

When a checkpoint is due it asks every shard (a small point-to-point message) to write its
slice, Adagrad state and counters; it keeps training; as replies arrive (polled after each
step) it records their hashes, and when every shard has replied it writes the manifest,
which commits the checkpoint. Shards write at slightly different moments: an asynchronous
system has no single global instant, and each shard's file is consistent in itself.
"""

import logging
import time
from pathlib import Path

from ..checkpoint.resume import layout_signature
from ..checkpoint.store import checkpoint_dir, commit_files
from ..comm.control import TAG_CHECKPOINT, TAG_CHECKPOINT_DONE, Backoff, receive_all
from ..config import to_toml
from .shard_checkpoint import save_shard

log = logging.getLogger(__name__)


class CheckpointCoordinator:
    def __init__(self, job, world_comm, shard_ranks):
        self.job, self.comm, self.shard_ranks = job, world_comm, list(shard_ranks)
        self.root = job.run_dir / "checkpoints"
        self.pending: dict | None = None  # {"step": int, "replies": {shard_id: reply}}
        self.last_committed = job.resume.step if job.resume else None  # a step's checkpoint exists

    def request(self, step: int, examples_seen: int) -> None:
        if step == self.last_committed:  # e.g. preempted right after a periodic checkpoint: nothing new
            return
        if self.pending is not None:  # checkpoints come faster than shards write them: wait
            log.warning("checkpoint at step %d waits for step %d's to be committed", step, self.pending["step"])
            self.finish()
        directory = str(checkpoint_dir(self.root, step))
        for rank in self.shard_ranks:
            self.comm.send({"step": step, "directory": directory}, dest=rank, tag=TAG_CHECKPOINT)
        self.pending = {"step": step, "examples_seen": examples_seen, "replies": {}}

    def poll(self) -> None:
        if self.pending is None:
            return
        for reply, _ in receive_all(self.comm, TAG_CHECKPOINT_DONE):
            assert reply["step"] == self.pending["step"], (
                f"a reply for step {reply['step']} while committing {self.pending['step']}"
            )
            self.pending["replies"][reply["shard_id"]] = reply
        if len(self.pending["replies"]) == len(self.shard_ranks):
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
                log.error("checkpoint at step %d not committed within %.1f s; abandoned", self.pending["step"], timeout)
                self.pending = None  # late replies stay unread; the previous checkpoint is the newest
                return False
            wait.sleep()
        return True

    def _commit(self) -> None:
        replies = [self.pending["replies"][s] for s in sorted(self.pending["replies"])]
        meta = {
            "layout": layout_signature(self.job.spec, self.job.layout),
            "job": to_toml(self.job.spec),
            "examples_seen": self.pending["examples_seen"],
            "shard_versions": [r["version"] for r in replies],
        }
        files = {r["file"]: r["sha256"] for r in replies}
        commit_files(self.root, self.pending["step"], files, meta, self.job.spec.checkpoint.keep)
        log.info("committed checkpoint at step %d", self.pending["step"])
        self.last_committed = self.pending["step"]
        self.pending = None


def reply_to_checkpoint(world_comm, shard, start: int, stop: int, request: dict, lead_rank: int) -> None:
    """Shard side: write this shard's part, tell the lead its name and hash."""
    name, sha = save_shard(Path(request["directory"]), shard, start, stop)
    world_comm.send(
        {"shard_id": shard.shard_id, "step": request["step"], "file": name, "sha256": sha, "version": shard.version},
        dest=lead_rank,
        tag=TAG_CHECKPOINT_DONE,
    )
