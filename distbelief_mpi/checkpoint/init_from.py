"""--init-from RUN_DIR|params.h5: a new run (new optimizer state) starting from trained weights,
e.g. the paper's warmstart as a separate SGD phase seeding a larger Downpour job, or fine-tuning.

Rank 0 checks the source once (source_params); each shard then reads its own slice of it
(roles/shard_order.initial_params), a single-rank run the whole vector.
"""

import dataclasses
from pathlib import Path

import h5py

from ..config import load_job
from ..errors import CheckpointError, ConfigError
from .reshard import SavedVector


def source_params(argument: str, spec, network) -> Path:
    """The params.h5 --init-from names (the file, or RUN_DIR/params.h5), absolute, after checking
    it holds this model's parameter count (and, for a run directory, the same layers)."""
    path = Path(argument)
    if path.is_dir():
        _check_layers(path, spec)
        path = path / "params.h5"
    if not path.is_file():
        raise CheckpointError(f"--init-from {argument}: {path} not found (a finished run writes params.h5)")
    try:
        with h5py.File(path, "r") as handle:
            n_params = int(handle.attrs["n_params"]) if "params" in handle else None
    except (OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the parameter file ({exc})") from None
    if n_params is None:
        raise CheckpointError(f"{path}: no /params dataset; not a distbelief parameter file")
    if n_params != network.n_params:
        raise CheckpointError(
            f"{path}: holds {n_params} parameters, this job's model has {network.n_params} (model.layers and "
            "the dataset's input and classes must match the source run's)"
        )
    return path.resolve()


def saved_params(path: Path, n_params: int) -> SavedVector:
    """params.h5 as one canonical file, for reshard.plan_copies."""
    return SavedVector((path,), ((0, n_params),), None)


def _check_layers(run_dir: Path, spec) -> None:
    """The source run's model.layers must be this job's: the same count can hide other shapes."""
    try:
        source = load_job(run_dir / "job.toml")
    except (ConfigError, OSError):
        return  # no readable job.toml: the parameter count is still checked
    if source.model.layers != spec.model.layers:
        ours = [dataclasses.asdict(layer) for layer in spec.model.layers]
        theirs = [dataclasses.asdict(layer) for layer in source.model.layers]
        raise CheckpointError(
            f"--init-from {run_dir}: model.layers differ from this job's\n"
            f"  the source run: {theirs}\n  this job: {ours}"
        )
