"""One flat parameter vector in an HDF5 file, written atomically, read with checks.

Layout: dataset `/params` (n_params,) float32 (contiguous), root attributes `n_params`,
`step` and any caller-given metadata. Streamed into a temporary file and renamed
(runtime/files.hdf5_stream): a writer that holds only slices (the shards' parameters, one
at a time) writes each where it belongs, and nothing of the vector's size is built.
"""

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np

from ..errors import CheckpointError
from ..model.partition import ParamOrder
from ..runtime.files import DatasetPlan, hdf5_stream


def save_params(path: Path, params: np.ndarray, attrs: dict) -> None:
    """Write a whole vector (N,) to a temporary name beside `path`, fsync and rename."""
    with params_stream(path, len(params), attrs) as write:
        write(0, params)


# Floats of params.h5 a writer holding slices only (a Downpour lead, Sandblaster's coordinator)
# reads from a shard at a time: 16 MB.
PARAMS_CHUNK = 1 << 22


@contextlib.contextmanager
def params_stream(
    path: Path, n_params: int, attrs: dict, order: ParamOrder | None = None
) -> Iterator[Callable[[int, np.ndarray], None]]:
    """Yields write(start, values) for elements [start, start + len(values)) of the vector in the
    order the shards hold it: order (model/partition.ParamOrder; None: the canonical order
    itself) puts each piece where it belongs in /params, canonical. The file appears at `path`
    (fsynced, renamed) when the block ends without an error."""
    plan = DatasetPlan("params", (n_params,), "<f4")
    with hdf5_stream(Path(path), [plan], {"n_params": n_params, **attrs}) as writer:

        def write(start: int, values: np.ndarray) -> None:
            if order is None:
                writer.write("params", start, values)
                return
            for position, canonical_start, length in order.segments(start, start + len(values)):
                writer.write("params", canonical_start, values[position - start : position - start + length])

        yield write


def load_params(path: Path) -> tuple[np.ndarray, dict]:
    """Return (params float32 (n,), attrs). CheckpointError names the file and the fault."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: parameter file not found")
    try:
        with h5py.File(path, "r") as handle:
            if "params" not in handle:
                raise CheckpointError(f"{path}: no /params dataset; not a distbelief parameter file")
            params = handle["params"][...]
            attrs = {key: _plain(value) for key, value in handle.attrs.items()}
    except CheckpointError:
        raise
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the parameter file ({exc})") from None
    if params.ndim != 1 or attrs.get("n_params") != len(params):
        raise CheckpointError(
            f"{path}: /params has shape {params.shape}, attribute n_params says {attrs.get('n_params')}"
        )
    if not np.all(np.isfinite(params)):
        raise CheckpointError(f"{path}: /params holds NaN or Inf values")
    return params.astype(np.float32, copy=False), attrs


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
