"""A shard's part of a Downpour checkpoint: RUN_DIR/checkpoints/step-N/shard-S.h5.

Datasets `params` (L,) and `accumulator` (L,) float32; attributes `version`, `shard_id`,
`start`, `stop` and `stats` (JSON). Streamed into a temporary file and renamed
(runtime/files.hdf5_stream); the lead replica's manifest (written after every shard replied,
with the SHA-256 of every file) commits it and is what detects a damaged file.
"""

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from ..errors import CheckpointError
from ..runtime.files import DatasetPlan, Hdf5Writer, hdf5_stream
from .store import file_sha256, write_errors_named


def shard_file_name(shard_id: int) -> str:
    return f"shard-{shard_id}.h5"


def write_shard_file(
    directory: Path, shard_id: int, plans: list[DatasetPlan], attrs: dict, write: Callable[[Hdf5Writer], None]
) -> tuple[str, str]:
    """Stream directory/shard-S.h5 (datasets `plans`, filled by write(writer)) to a temporary
    file and rename it (a write error names the directory and the newest intact checkpoint);
    return (file name, SHA-256)."""
    directory, name = Path(directory), shard_file_name(shard_id)
    with write_errors_named(directory):
        directory.mkdir(parents=True, exist_ok=True)
        with hdf5_stream(directory / name, plans, attrs) as writer:
            write(writer)
    return name, file_sha256(directory / name)


def save_shard(directory: Path, shard, start: int, stop: int) -> tuple[str, str]:
    """Write this shard's state; return (file name, SHA-256)."""

    arrays = {"params": shard.params, "accumulator": shard.accumulator}
    plans = [DatasetPlan(key, values.shape, values.dtype.str) for key, values in arrays.items()]
    attrs = {
        "version": shard.version,
        "shard_id": shard.shard_id,
        "start": start,
        "stop": stop,
        "stats": json.dumps(shard.stats.as_dict()),
    }

    def write(writer: Hdf5Writer) -> None:
        for key, values in arrays.items():
            writer.write(key, 0, values)

    return write_shard_file(directory, shard.shard_id, plans, attrs, write)


def load_shard(path: Path, shard_id: int, start: int, stop: int) -> dict:
    """{params, accumulator, version, stats}; CheckpointError naming the file on any fault."""
    try:
        with h5py.File(path, "r") as handle:
            state = {
                "params": handle["params"][...],
                "accumulator": handle["accumulator"][...],
                "version": int(handle.attrs["version"]),
                "stats": json.loads(handle.attrs["stats"]),
                "range": (int(handle.attrs["start"]), int(handle.attrs["stop"])),
            }
    except (OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read shard {shard_id}'s checkpoint ({exc})") from None
    if state["range"] != (start, stop) or len(state["params"]) != stop - start:
        raise CheckpointError(f"{path}: holds parameters {state['range']}, shard {shard_id} owns [{start}, {stop})")
    if not np.all(np.isfinite(state["params"])):
        raise CheckpointError(f"{path}: parameters hold NaN or Inf")
    return state
