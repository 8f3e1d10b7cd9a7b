"""One flat parameter vector in an HDF5 file, written atomically, read with checks.

Layout: dataset `/params` (n_params,) float32 with fletcher32, root attributes
`n_params`, `step` and any caller-given metadata (e.g. a model description).
"""

from pathlib import Path

import h5py
import numpy as np

from ..errors import CheckpointError
from ..runtime.files import write_hdf5_atomic


def save_params(path: Path, params: np.ndarray, attrs: dict) -> None:
    """Write to a temporary name beside `path`, fsync and rename (crash-safe)."""

    def fill(handle):
        handle.create_dataset("params", data=params, chunks=(min(len(params), 1 << 20) or 1,), fletcher32=True)
        handle.attrs["n_params"] = len(params)
        for key, value in attrs.items():
            handle.attrs[key] = value

    write_hdf5_atomic(Path(path), fill)


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
