"""Committed checkpoints: RUN_DIR/checkpoints/step-NNNNNNNNN/{data files, manifest.json}.

Single-replica SGD writes one `params.h5`; Downpour writes one `shard-S.h5` per shard
(each shard its own, see checkpoint/shard_files.py) and the lead replica commits them.

Every data file is written to a temporary name and renamed; the manifest (step, the
SHA-256 of every file, caller metadata) is written last and is the commit marker. A
directory without a manifest, or whose files do not match their hashes, is not a
checkpoint: readers skip it and fall back to the previous complete one. Each file is hashed
once by its writer (a shard hashes its own); committing and pruning read manifests only.
"""

import contextlib
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from ..errors import CheckpointWriteError
from ..runtime.files import write_text_atomic
from .params_file import save_params

MANIFEST = "manifest.json"


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:09d}"


def commit_checkpoint(root: Path, step: int, params: np.ndarray, meta: dict, keep: int) -> Path:
    """Write and commit a one-file checkpoint for `step`, then keep only the newest `keep`."""
    directory = checkpoint_dir(root, step)
    with write_errors_named(directory):
        directory.mkdir(parents=True, exist_ok=True)
        save_params(directory / "params.h5", params, {"step": step})
    return commit_files(root, step, {"params.h5": file_sha256(directory / "params.h5")}, meta, keep)


@contextlib.contextmanager
def write_errors_named(directory: Path):
    """Turn an OSError while writing checkpoint files (disk full, file-size limit) into one clear
    message; the files already committed are untouched (every write goes to a temporary name)."""
    try:
        yield
    except OSError as exc:  # HDF5 files are streamed (runtime/files.hdf5_stream): plain OSErrors
        newest = newest_complete(Path(directory).parent)
        kept = f"the newest complete checkpoint, {newest[0].name}, is intact" if newest else "no checkpoint exists yet"
        raise CheckpointWriteError(
            f"{directory}: cannot write the checkpoint ({exc.strerror or exc}); {kept}"
        ) from None


def commit_files(root: Path, step: int, files: dict[str, str], meta: dict, keep: int) -> Path:
    """Write the manifest (the commit marker) for data files already in place, with their
    SHA-256 hashes; then delete all but the newest `keep` complete checkpoints."""
    directory = checkpoint_dir(root, step)
    manifest = {"step": step, "files": files, **meta}
    with write_errors_named(directory):
        write_text_atomic(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    prune_checkpoints(root, keep)
    return directory


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: Path) -> dict | None:
    """The manifest of a complete checkpoint, or None when it is missing, unreadable or
    any file's hash differs (a partial or damaged checkpoint)."""
    manifest = committed_manifest(directory)
    try:
        if manifest is not None and all(
            file_sha256(Path(directory) / name) == digest for name, digest in manifest["files"].items()
        ):
            return manifest
    except OSError:
        pass
    return None


def committed_manifest(directory: Path) -> dict | None:
    """The manifest of a committed checkpoint (readable, naming files that exist), without
    hashing them: what a writer needs to know of its own checkpoints (pruning, "is this step
    committed?"). A reader about to use the files calls read_manifest, which checks them."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if isinstance(files, dict) and all((Path(directory) / name).is_file() for name in files):
            return manifest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _step_directories(root: Path) -> list[Path]:
    """Every step-N directory under root, newest first (complete or not)."""
    root = Path(root)
    return sorted((d for d in root.glob("step-*") if d.is_dir()), reverse=True) if root.is_dir() else []


def complete_checkpoints(root: Path) -> list[Path]:
    """Committed, undamaged checkpoint directories, newest first."""
    return [d for d in _step_directories(root) if read_manifest(d) is not None]


def newest_complete(root: Path) -> tuple[Path, dict] | None:
    """The newest committed, undamaged checkpoint and its manifest, or None. Each manifest is read
    (and its files hashed) once, so a reader racing a live job's pruning never gets a checkpoint
    whose manifest has gone by the time it looks."""
    for directory in _step_directories(root):
        manifest = read_manifest(directory)
        if manifest is not None:
            return directory, manifest
    return None


def newest_committed_step(root: Path) -> int | None:
    """The step of the newest committed checkpoint (its files not hashed), or None."""
    for directory in _step_directories(root):
        manifest = committed_manifest(directory)
        if manifest is not None:
            return int(manifest["step"])
    return None


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` committed checkpoints, and any older partial ones.
    Committed, not verified: each file was hashed once, by its writer, when it was committed;
    re-hashing every kept checkpoint at every commit would cost (keep x the model) of reads.
    Damage after a commit is the readers' concern (resume falls back past it)."""
    committed = [d for d in _step_directories(root) if committed_manifest(d) is not None]
    if not committed:
        return
    for directory in committed[keep:]:
        shutil.rmtree(directory, ignore_errors=True)
    oldest_kept = committed[:keep][-1].name
    for directory in Path(root).glob("step-*"):
        if directory.name < oldest_kept and directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
