"""Sandblaster checkpoints: RUN_DIR/checkpoints/step-N/{shard-S.h5, manifest.json}.

Taken between L-BFGS iterations (or between batches), where the whole optimiser state is
  - on each shard, its slice of x and g and the (s, y) history pairs: `shard-S.h5`, written
    by the shard itself (datasets `x`, `g` (L,), `s`, `y` (k, L) float64, checkpoint/sandblaster_shard.py;
    attributes `pids`, `shard_id`, `start`, `stop`);
  - on the coordinator, scalars only: L-BFGS's loss, dot-product cache and counters
    (optim/lbfgs.LbfgsRun.snapshot) and the batch loop's counters, in the manifest under
    "sandblaster". The manifest, written after every shard replied, commits the checkpoint.
Replicas hold nothing that is not recomputed: they fetch the point of the next evaluation.
A resumed run takes exactly the steps of an uninterrupted one wherever that one is itself
deterministic (one replica: gradient sums then arrive in the same order).
"""

from pathlib import Path

from ...checkpoint.resume import layout_signature
from ...checkpoint.sandblaster_shard import save_vectors
from ...checkpoint.store import checkpoint_dir, commit_files
from ...comm.messages import SaveShard
from ...config import to_toml
from ...errors import CheckpointWriteError


def shard_save_reply(directory: str, with_history: bool, shard_id: int, start: int, stop: int, vectors) -> dict:
    """The shard's answer to SaveShard(directory, with_history): {"file": (name, sha)} or
    {"error": message} (a full disk must reach the coordinator as one clear error, not end the shard)."""
    try:
        return {"file": save_vectors(Path(directory), shard_id, start, stop, vectors.state(with_history))}
    except CheckpointWriteError as exc:
        return {"error": str(exc)}


class CoordinatorCheckpoints:
    """The coordinator's side: asks every shard to save, then commits the manifest.
    cluster: roles/sandblaster/cluster.ShardsAndReplicas."""

    def __init__(self, job, cluster):
        self.job, self.cluster = job, cluster
        self.root = job.run_dir / "checkpoints"
        self.last_step = job.resume.step if job.resume else None  # the newest committed step (it exists)

    def commit(self, step: int, driver_state: dict, with_history: bool) -> None:
        """with_history False between batches: the next batch starts with none."""
        if step == self.last_step:
            return
        directory = checkpoint_dir(self.root, step)
        replies = self.cluster.shard_call(SaveShard(str(directory), with_history))
        errors = [reply["error"] for reply in replies if "error" in reply]
        if errors:
            raise CheckpointWriteError(errors[0])
        self.cluster.keep_alive(everyone=True)  # committing writes and fsyncs the manifest
        spec = self.job.spec
        meta = {
            "examples_seen": self.cluster.state.examples_evaluated,
            "sandblaster": driver_state,
            "layout": layout_signature(spec, self.job.layout),
            "job": to_toml(spec),
        }
        commit_files(self.root, step, dict(reply["file"] for reply in replies), meta, spec.checkpoint.keep)
        self.last_step = step
