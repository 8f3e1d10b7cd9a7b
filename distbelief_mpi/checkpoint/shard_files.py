"""A shard's part of a Downpour checkpoint: RUN_DIR/checkpoints/step-N/shard-S.h5.

Datasets `params` (L,) and `accumulator` (L,) float32 with fletcher32; attributes
`version`, `shard_id`, `start`, `stop` and `stats` (JSON). Written to a temporary name
and renamed; the lead replica's manifest (written after every shard replied) commits it.
"""

import json
from pathlib import Path

import h5py
import numpy as np

from ..errors import CheckpointError
from ..runtime.files import write_hdf5_atomic
from .store import file_sha256, write_errors_named


def shard_file_name(shard_id: int) -> str:
    return f"shard-{shard_id}.h5"


def write_shard_file(directory: Path, shard_id: int, fill) -> tuple[str, str]:
    """Build directory/shard-S.h5 with fill(h5py.File) and write it atomically (a write error
    names the directory and the newest intact checkpoint); return (file name, SHA-256)."""
    directory, name = Path(directory), shard_file_name(shard_id)
    with write_errors_named(directory):
        directory.mkdir(parents=True, exist_ok=True)
        write_hdf5_atomic(directory / name, fill)
    return name, file_sha256(directory / name)


def save_shard(directory: Path, shard, start: int, stop: int) -> tuple[str, str]:
    """Write this shard's state; return (file name, SHA-256)."""

    def fill(handle):
        for key, values in (("params", shard.params), ("accumulator", shard.accumulator)):
            handle.create_dataset(key, data=values, chunks=(min(len(values), 1 << 20) or 1,), fletcher32=True)
        handle.attrs.update(
            {
                "version": shard.version,
                "shard_id": shard.shard_id,
                "start": start,
                "stop": stop,
                "stats": json.dumps(shard.stats.as_dict()),
            }
        )

    return write_shard_file(directory, shard.shard_id, fill)


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
