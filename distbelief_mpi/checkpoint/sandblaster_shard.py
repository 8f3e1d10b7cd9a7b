"""A Sandblaster shard's checkpoint file: RUN_DIR/checkpoints/step-N/shard-S.h5.

Datasets `x`, `g` (L,) and `s`, `y` (k, L) float64 (the shard's slice of the
L-BFGS point, gradient and history pairs); attributes `pids`, `shard_id`, `start`, `stop`.
Written by the shard itself (roles/sandblaster/checkpoints.py commits the manifest).
"""

from pathlib import Path

import h5py
import numpy as np

from ..errors import CheckpointError
from ..runtime.files import DatasetPlan, Hdf5Writer
from .shard_files import write_shard_file


def save_vectors(directory: Path, shard_id: int, start: int, stop: int, state: dict) -> tuple[str, str]:
    """Write a shard's optim/vector_ops.ShardVectors.state(); return (file name, SHA-256)."""
    length, pairs = stop - start, len(state["pids"])
    plans = [DatasetPlan(key, (length,), "<f8") for key in ("x", "g")]
    plans += [DatasetPlan(key, (pairs, length), "<f8") for key in ("s", "y")]
    attrs = {"pids": np.asarray(state["pids"], np.int64), "shard_id": shard_id, "start": start, "stop": stop}

    def write(writer: Hdf5Writer) -> None:
        for key in ("x", "g"):
            writer.write(key, 0, state[key])
        for key in ("s", "y"):  # row by row from the shard's own arrays: no stacked copy
            for index, row in enumerate(state[key]):
                writer.write(key, index * length, row)

    return write_shard_file(directory, shard_id, plans, attrs, write)


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
