"""Resuming a run: find the newest complete checkpoint and check it fits the job.

Rank 0 alone calls these (train.py), hashing the checkpoint's files once, and broadcasts the
ResumePoint or the error to every rank."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, UserInputError
from .store import MANIFEST, newest_complete

# Layout keys a resume may change: the checkpoint is then re-sliced onto the new shards
# (checkpoint/reshard.py); every other key of layout_signature must match.
TOPOLOGY_KEYS = ("shards", "replicas", "shard_ranges", "partitions_per_replica", "partition_grid")


@dataclass(frozen=True)
class ResumePoint:
    directory: Path
    manifest: dict
    changed: tuple[str, ...] = ()  # the TOPOLOGY_KEYS whose values differ from the job's

    @property
    def step(self) -> int:
        return int(self.manifest["step"])

    @property
    def same_slices(self) -> bool:
        """Each shard's file holds exactly its slice now: the shard cuts and the order stay."""
        return not set(self.changed) - {"replicas"}

    def describe(self) -> dict:
        """summary.json's resumed_from: the step and checkpoint, and the topology it was
        written with when this run has another."""
        described: dict = {"step": self.step, "checkpoint": str(self.directory)}
        if self.changed:
            described["from_topology"] = self.saved_topology
        return described

    @property
    def saved_topology(self) -> dict:
        """The checkpoint's shards, replicas, partitions_per_replica and partition_grid."""
        saved = self.manifest.get("layout", {})
        return {
            "shards": saved.get("shards"),
            "replicas": saved.get("replicas"),
            "partitions_per_replica": saved.get("partitions_per_replica", 1),
            "partition_grid": saved.get("partition_grid", "rows"),
        }


def layout_signature(spec, layout) -> dict:
    """What a checkpoint must share with the job that resumes it."""
    return {
        "algorithm": spec.optimizer.algorithm,
        "n_params": layout.n_params,
        "layers": [dataclasses.asdict(layer) for layer in spec.model.layers],
        "shards": spec.topology.shards,
        "replicas": spec.topology.replicas,
        "shard_ranges": [list(r) for r in layout.shard_ranges],
        "server_rule": spec.optimizer.server_rule,
        # partitioned replicas order the parameters partition-major (model/partition.py)
        **(
            {"partitions_per_replica": spec.topology.partitions_per_replica}
            if spec.topology.partitions_per_replica > 1
            else {}
        ),
        **_grid_signature(spec.topology),
        **(_lbfgs_signature(spec) if spec.optimizer.algorithm == "sandblaster" else {}),
    }


def _grid_signature(topology) -> dict:
    """Blocks of rows x columns order the parameters differently from whole rows (and "auto" may
    choose either): the checkpoint records its grid so a resume with another one re-slices it
    (roles/shard_start.saved_vector). Whole rows ("rows" or "Px1") add nothing, so their
    checkpoints are as before."""
    grid = topology.partition_grid
    whole_rows = grid == "rows" or grid == f"{topology.partitions_per_replica}x1"
    return {} if whole_rows or topology.partitions_per_replica == 1 else {"partition_grid": grid}


def _lbfgs_signature(spec) -> dict:
    """Sandblaster resumes inside a batch with its history and its loss: the objective (batch
    windows over the split shuffled by the seed, the penalty) and the history length must stay."""
    o = spec.optimizer
    return {
        "lbfgs_memory": o.lbfgs_memory,
        "sandblaster_batch": o.sandblaster_batch,
        "lbfgs_iterations_per_batch": o.lbfgs_iterations_per_batch,
        "l2_penalty": o.l2_penalty,
        "seed": spec.run.seed,
    }


def find_resume_point(run_dir: Path, spec, layout) -> ResumePoint:
    """The newest complete checkpoint of run_dir; CheckpointError naming every mismatch."""
    root = Path(run_dir) / "checkpoints"
    found = newest_complete(root)
    if found is None:
        raise CheckpointError(f"{run_dir}: no complete checkpoint to resume from (looked in {root})")
    return _fitting(*found, spec, layout)


def _fitting(directory: Path, manifest: dict, spec, layout) -> ResumePoint:
    """The checkpoint as a resume point, onto this job's topology whatever the checkpoint's;
    CheckpointError naming every other key that differs from the job (a different model,
    optimizer rule or L-BFGS objective cannot carry over)."""
    saved, wanted = manifest.get("layout", {}), layout_signature(spec, layout)
    differing = sorted(key for key in wanted.keys() | saved.keys() if saved.get(key) != wanted.get(key))
    mismatches = [
        f"{key}: the checkpoint has {saved.get(key)!r}, this job has {wanted.get(key)!r}"
        for key in differing
        if key not in TOPOLOGY_KEYS
    ]
    if mismatches:
        raise CheckpointError(
            f"{directory}: does not fit this job; resume needs the same model and optimizer "
            "(shards, replicas and partitions may change):\n" + "\n".join(f"  - {m}" for m in mismatches)
        )
    return ResumePoint(directory, manifest, tuple(key for key in differing if key in TOPOLOGY_KEYS))


def auto_resume_point(run_dir: Path, spec, layout) -> ResumePoint | None:
    """--resume auto: the newest complete checkpoint, or None (start afresh) when the run has
    none yet. Refuses, rather than start afresh over them, committed checkpoints that are all
    damaged and a finished run: both would lose work."""
    run_dir = Path(run_dir)
    root = run_dir / "checkpoints"
    found = newest_complete(root)  # hashes the newest complete checkpoint's files once
    if found is not None:
        return _fitting(*found, spec, layout)
    committed = [d for d in root.glob("step-*") if (d / MANIFEST).exists()] if root.is_dir() else []
    if committed:
        raise CheckpointError(
            f"{root}: {len(committed)} committed checkpoint(s), all damaged (a file does not "
            "match its hash); not starting afresh over them. Move them aside to start anew."
        )
    if (run_dir / "summary.json").exists():
        raise UserInputError(
            f"{run_dir}: holds a finished run and no checkpoint to continue from; choose a new --run-dir"
        )
    return None
