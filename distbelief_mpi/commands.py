"""`distbelief plan` and `distbelief eval`: small commands that need no MPI."""

from pathlib import Path

from .checkpoint.params_file import load_params
from .config import AUTO_REPLICAS, load_job
from .data.hdf5 import DatasetAbsent, DatasetInfo, read_info, read_split
from .errors import CheckpointError, DatasetError, UserInputError
from .layout import (
    WorldSizeError,
    format_layout,
    layout_problems,
    needs_text,
    plan_layout,
    replicas_on,
    resolve_topology,
    sizes_that_fit,
)
from .memory import DataSize, format_memory, predict_memory
from .model.network import build_network
from .model.partition import job_grid, partition_offsets


def run_plan(
    job_path: str,
    overrides: list[str],
    world_size: int | None,
    memory: bool = False,
    input_shape: str | None = None,
    n_classes: int | None = None,
) -> int:
    """world_size None: say which sizes the job fits and plan the smallest. input_shape ("C,H,W"
    or "D") and n_classes stand in for the dataset's header when its file is absent (planning a
    model before its data exists)."""
    spec = load_job(job_path, overrides)
    if world_size is not None and world_size < 1:
        raise UserInputError(f"-n {world_size}: the world size must be >= 1")
    if world_size is None:
        world_size = sizes_that_fit(spec).first
        print(f"{spec.source}: {needs_text(spec)}; the layout on {world_size} ranks:")
    n_params, notes, offsets, network, data = None, [], (), None, DataSize(None, None)
    try:
        shape, classes, data, notes = _model_input(spec, input_shape, n_classes)
        network = build_network(spec.model.layers, shape, classes, source=spec.source)
        n_params = network.n_params
        offsets = partition_offsets(network, spec)
        notes += _grid_note(network, spec.topology)
        notes += [f"model ({n_params:,} parameters, input {shape}, {classes} classes):"]
        notes += [f"  {line}" for line in network.describe()]
    except DatasetError as exc:
        notes = [f"note: parameter ranges need the dataset (or --input-shape and --classes): {exc}"]
    problems = layout_problems(world_size, spec, n_params)
    if problems:
        raise WorldSizeError(spec.source, world_size, problems)
    notes = _auto_note(spec, world_size) + notes
    spec = resolve_topology(spec, world_size)
    layout = plan_layout(world_size, spec, n_params, offsets)
    print(format_layout(layout))
    print("\n".join(notes))
    if memory:
        if network is None:
            raise UserInputError(
                f"{spec.data.path}: --memory needs the model's input: the dataset, or --input-shape and --classes"
            )
        print(format_memory(predict_memory(spec, network, layout, data)))
    return 0


def _auto_note(spec, world_size: int) -> list[str]:
    """What topology.replicas = "auto" resolved to, and that a launch on another size differs."""
    if spec.topology.replicas != AUTO_REPLICAS:
        return []
    replicas = replicas_on(world_size, spec.topology)
    return [f'topology.replicas = "auto": {replicas} on {world_size} ranks (resolved per launch; {needs_text(spec)})']


def _grid_note(network, topology) -> list[str]:
    """What topology.partition_grid resolved to ("auto" chooses by the geometry)."""
    if topology.partitions_per_replica == 1:
        return []
    rows, cols = job_grid(network, topology)
    what = "blocks of whole rows" if cols == 1 else "blocks of rows x columns"
    return [
        f"partition grid: {rows}x{cols} (image layers in {what}; topology.partition_grid = {topology.partition_grid!r})"
    ]


def _model_input(spec, input_shape: str | None, n_classes: int | None):
    """(input shape, classes, split sizes, notes) from the dataset's header, or from the
    overrides when the dataset file is absent (DatasetError when neither is there)."""
    given = input_shape is not None or n_classes is not None
    if given and (input_shape is None or n_classes is None):
        raise UserInputError("--input-shape and --classes go together: give both")
    if given and not Path(spec.data.path).exists():
        assert input_shape is not None and n_classes is not None
        note = f"note: {spec.data.path} is absent: input {input_shape} and {n_classes} classes from the command line"
        return _parse_shape(input_shape), n_classes, DataSize(None, None), [note]
    info = _header_unless_absent(spec.data.path)
    notes = [f"note: --input-shape and --classes ignored: {spec.data.path} exists"] if given else []
    return info.input_shape, info.n_classes, DataSize(info.n_train, info.n_test), notes


def _header_unless_absent(path) -> DatasetInfo:
    """read_info, where only an absent file stays a DatasetError (run_plan notes it: planning
    before the data exists); a file that is there but unusable is refused with train's message."""
    try:
        return read_info(path)
    except DatasetAbsent:
        raise
    except DatasetError as exc:
        raise UserInputError(str(exc)) from None


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise UserInputError(f"--input-shape {text}: expected C,H,W (an image) or D (a vector) of positive integers")
    return shape


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


def run_eval_target(target: str, data_path: str | None) -> int:
    """`distbelief eval RUN_DIR|model.h5`: a run directory as run_eval does (job.toml and
    params.h5); a model file on its own, on --data or the dataset it records."""
    if Path(target).is_dir():
        return run_eval(target, data_path)
    from .api import load_model

    model = load_model(target)
    info = read_info(data_path or model.header.attrs.get("dataset_path", ""))
    if (info.input_shape, info.n_classes) != (model.input_shape, model.n_classes):
        raise UserInputError(
            f"{info.path}: input {info.input_shape} and {info.n_classes} classes, but {model.path} takes "
            f"input {model.input_shape} and {model.n_classes} classes"
        )
    x_test, y_test = read_split(info.path, "test")  # float32, x_scale applied: as in training
    loss, accuracy = model.network.evaluate(model.flat_params(), x_test, y_test)
    print(f"{model.path}: test accuracy {accuracy:.4f} on {len(y_test)} examples of {info.path} (loss {loss:.4f})")
    return 0


def run_predict(target: str, input_text: str, output: str, top_k: int, batch_size: int) -> int:
    """`distbelief predict`: see predict.py for the formats. Under `mpiexec -n P` (P > 1) the
    model is split over the P ranks and predicted model-parallel (roles/predict_parallel.py)."""
    from .predict import launched_ranks, predict_file, single_process

    if launched_ranks() > 1:
        from .roles.predict_parallel import predict_model_parallel

        return predict_model_parallel(target, input_text, Path(output), top_k, batch_size)
    from .api import load_model

    model = load_model(target)
    n = predict_file(single_process(model), input_text, Path(output), top_k, batch_size)
    print(predicted_line(model.path, n, model.n_classes, output, top_k))
    return 0


def predicted_line(model_path, n: int, n_classes: int, output, top_k: int) -> str:
    from .predict import topk_path

    also = f" and the top {top_k} classes to {topk_path(Path(output))}" if top_k else ""
    return f"{model_path}: {n:,} predictions of {n_classes} classes to {output}{also}"


def run_export(target: str, fmt: str, output: str | None) -> int:
    """`distbelief export`: RUN_DIR's model.h5 as npz, torch or onnx (export/)."""
    from .export import export_model

    path = export_model(target, fmt, output)
    print(f"{path}: {fmt} export of {target}")
    return 0
