"""Sandblaster checkpoints: RUN_DIR/checkpoints/step-N/{shard-S.h5, manifest.json}.

Taken between L-BFGS iterations (or between batches), where the whole optimiser state is
  - on each shard, its slice of x and g and the (s, y) history pairs: `shard-S.h5`, written
    by the shard itself (datasets `x`, `g` (L,), `s`, `y` (k, L) float64 with fletcher32;
    attributes `pids`, `shard_id`, `start`, `stop`);
  - on the coordinator, scalars only: L-BFGS's loss, dot-product cache and counters
    (optim/lbfgs.LbfgsRun.snapshot) and the batch loop's counters, in the manifest under
    "sandblaster". The manifest, written after every shard replied, commits the checkpoint.
Replicas hold nothing that is not recomputed: they fetch the point of the next evaluation.
A resumed run takes exactly the steps of an uninterrupted one wherever that one is itself
deterministic (one replica: gradient sums then arrive in the same order).
"""

from pathlib import Path

import h5py
import numpy as np

from ..checkpoint.resume import layout_signature
from ..checkpoint.store import checkpoint_dir, commit_files
from ..comm.messages import SaveShard
from ..config import to_toml
from ..errors import CheckpointError, CheckpointWriteError
from .shard_checkpoint import write_shard_file


def save_vectors(directory: Path, shard_id: int, start: int, stop: int, state: dict) -> tuple[str, str]:
    """Write a shard's optim/vector_ops.ShardVectors.state(); return (file name, SHA-256)."""
    length, pairs = stop - start, len(state["pids"])

    def fill(handle):
        for key in ("x", "g"):
            handle.create_dataset(key, data=state[key], **_checksummed((length,)))
        for key in ("s", "y"):  # row by row from the shard's own arrays: no stacked copy
            rows = handle.create_dataset(
                key, shape=(pairs, length), dtype=np.float64, **_checksummed((1, length)) if pairs and length else {}
            )
            for index, row in enumerate(state[key]):
                rows[index] = row
        handle.attrs.update(
            {"pids": np.asarray(state["pids"], np.int64), "shard_id": shard_id, "start": start, "stop": stop}
        )

    return write_shard_file(directory, shard_id, fill)


def _checksummed(chunks: tuple) -> dict:
    """fletcher32 needs chunked storage (and a chunk may not be empty or over 4 GB)."""
    if 0 in chunks:
        return {}
    return {"chunks": tuple(min(c, 1 << 20) for c in chunks), "fletcher32": True}


def load_vectors(path: Path, shard_id: int, start: int, stop: int) -> dict:
    """The state save_vectors wrote; CheckpointError naming the file on any fault."""
    try:
        with h5py.File(path, "r") as handle:
            state = {key: handle[key][...] for key in ("x", "g", "s", "y")}
            state["pids"] = [int(pid) for pid in handle.attrs["pids"]]
            saved_range = (int(handle.attrs["start"]), int(handle.attrs["stop"]))
    except (OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read shard {shard_id}'s L-BFGS state ({exc})") from None
    length, pairs = stop - start, len(state["pids"])
    shapes = {key: state[key].shape for key in ("x", "g", "s", "y")}
    if saved_range != (start, stop) or shapes != {
        "x": (length,),
        "g": (length,),
        "s": (pairs, length),
        "y": (pairs, length),
    }:
        raise CheckpointError(
            f"{path}: holds slice {saved_range} with shapes {shapes}, shard {shard_id} owns [{start}, {stop})"
        )
    if not all(np.all(np.isfinite(state[key])) for key in ("x", "g")):
        raise CheckpointError(f"{path}: x or g holds NaN or Inf")
    return state


def shard_save_reply(directory: str, with_history: bool, shard_id: int, start: int, stop: int, vectors) -> dict:
    """The shard's answer to SaveShard(directory, with_history): {"file": (name, sha)} or
    {"error": message} (a full disk must reach the coordinator as one clear error, not end the shard)."""
    try:
        return {"file": save_vectors(Path(directory), shard_id, start, stop, vectors.state(with_history))}
    except CheckpointWriteError as exc:
        return {"error": str(exc)}


class CoordinatorCheckpoints:
    """The coordinator's side: asks every shard to save, then commits the manifest.
    cluster: roles/sandblaster_cluster.ShardsAndReplicas."""

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
        self.cluster.keep_alive(everyone=True)  # committing hashes every kept checkpoint's files
        spec = self.job.spec
        meta = {
            "examples_seen": self.cluster.state.examples_evaluated,
            "sandblaster": driver_state,
            "layout": layout_signature(spec, self.job.layout),
            "job": to_toml(spec),
        }
        commit_files(self.root, step, dict(reply["file"] for reply in replies), meta, spec.checkpoint.keep)
        self.last_step = step
