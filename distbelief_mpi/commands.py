"""`distbelief plan` and `distbelief eval`: small commands that need no MPI."""

import sys
from pathlib import Path

from .checkpoint.params_file import load_params
from .config import load_job
from .data.hdf5 import read_info, read_split
from .errors import CheckpointError, DatasetError, UserInputError
from .layout import format_layout, layout_problems, plan_layout
from .model.network import build_network
from .model.partition import partition_offsets


def run_plan(job_path: str, overrides: list[str], world_size: int) -> int:
    spec = load_job(job_path, overrides)
    if world_size < 1:
        raise UserInputError(f"-n {world_size}: the world size must be >= 1")
    n_params, notes, offsets = None, [], ()
    try:
        info = read_info(spec.data.path)
        network = build_network(spec.model.layers, info.input_shape, info.n_classes, source=spec.source)
        n_params = network.n_params
        offsets = partition_offsets(network, spec)
        notes = [f"model ({n_params:,} parameters, input {info.input_shape}, {info.n_classes} classes):"]
        notes += [f"  {line}" for line in network.describe()]
    except DatasetError as exc:
        notes = [f"note: parameter ranges need the dataset: {exc}"]
    problems = layout_problems(world_size, spec, n_params)
    if problems:
        print(f"error: {job_path}: cannot run on {world_size} ranks:", file=sys.stderr)
        print("\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        return 2
    print(format_layout(plan_layout(world_size, spec, n_params, offsets)))
    print("\n".join(notes))
    return 0


def run_eval(run_dir: str, data_path: str | None) -> int:
    run = Path(run_dir)
    if not (run / "job.toml").exists():
        raise UserInputError(f"{run}: not a run directory (no job.toml)")
    spec = load_job(run / "job.toml")
    info = read_info(data_path or spec.data.path)
    network = build_network(spec.model.layers, info.input_shape, info.n_classes, source=spec.source)
    params, _ = load_params(run / "params.h5")
    if len(params) != network.n_params:
        raise CheckpointError(
            f"{run / 'params.h5'}: holds {len(params)} parameters, but the run's model on "
            f"{info.path} (input {info.input_shape}, {info.n_classes} classes) has "
            f"{network.n_params}; is this the dataset the run trained on?"
        )
    x_test, y_test = read_split(info.path, "test")
    loss, accuracy = network.evaluate(params, x_test, y_test)
    print(f"{run}: test accuracy {accuracy:.4f} on {len(y_test)} examples of {info.path} (loss {loss:.4f})")
    return 0
