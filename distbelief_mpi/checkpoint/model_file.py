"""RUN_DIR/model.h5: a trained model in one self-contained HDF5 file, format version 1.

Everything needed to use the model without the run's job spec or dataset:

    /layers/<i>/<tensor>   float32, one group per layer in network order (the softmax output
                           layer last); the tensors of a layer in its natural shape:
                             dense, output   W (D, U) then b (U,)     y = act(x_flat @ W + b)
                             local           W (P, K, F) then b (P, F), P = OH * OW output
                                             positions, K = C * patch * patch ordered (c, i, j)
                             maxpool, l2pool, lcn   no tensors (an empty group)
                           group attribute `type`: the layer's kind ("dense", ..., "output");
                           a plugin layer type's tensors are named by its param_shapes.
    root attributes        format = "distbelief-model", format_version = 1,
                           layers (JSON: the hidden layers' specs, as in [model] layers; the
                           output layer is implied by n_classes), plugins (JSON: the
                           [model] plugins modules, imported before the layers are read),
                           input_shape (int array: (C, H, W) or (D,)), n_classes,
                           x_scale (inputs in the dataset's raw
                           units are multiplied by it: what the trainer did), n_params, step,
                           dataset_name, dataset_source, dataset_path, dataset_n_train,
                           dataset_n_test, dataset_bytes, dataset_sha256 (the dataset file's
                           content_sha256, data/schema.ContentDigest; "" for files written
                           before it existed), created_by.

Concatenating every tensor flattened, in group order, gives params.h5's /params exactly.
The file is streamed from params.h5 a chunk at a time (no whole-model array anywhere) into a
temporary file, fsynced and renamed, like params.h5 (runtime/files.hdf5_stream).
"""

import bisect
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from ..model.plugins import load_plugins
from ..model.spec import LayerSpec, parse_layer, spec_entry
from ..runtime.files import DatasetPlan, hdf5_stream

FORMAT = "distbelief-model"
FORMAT_VERSION = 1
MODEL_FILE = "model.h5"
COPY_CHUNK = 1 << 22  # floats of params.h5 read at a time while writing (16 MB)


def layer_tensors(layer) -> list[tuple[str, tuple[int, ...]]]:
    """[(name, shape)] of a built layer's tensors in the order of its flat block (the layer's
    own param_shapes: model/layers.Layer)."""
    return [(name, tuple(shape)) for name, shape in layer.param_shapes().items()]


def specs_json(specs: list[LayerSpec]) -> str:
    """The hidden layers as [model] layers entries: [{"type": "dense", "units": 64, ...}, ...]."""
    return json.dumps([spec_entry(spec) for spec in specs])


def specs_from_json(text: str, where: str) -> list[LayerSpec]:
    """specs_json read back, each entry checked as a job spec's would be."""
    try:
        entries = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{where}: attribute 'layers' is not JSON ({exc})") from None
    if not isinstance(entries, list):
        raise CheckpointError(f"{where}: attribute 'layers' is not a list of layer specs")
    specs, problems = [], []
    for index, entry in enumerate(entries):
        spec, bad = parse_layer(entry, f"layers[{index}]")
        problems += bad
        if spec is not None:
            specs.append(spec)
    if problems:
        raise CheckpointError(f"{where}: attribute 'layers': " + "; ".join(problems))
    return specs


def dataset_attrs(info) -> dict:
    """What the model file records of the dataset (data/hdf5.DatasetInfo)."""
    path = Path(info.path).resolve()
    return {
        "dataset_name": info.name,
        "dataset_source": info.source,
        "dataset_path": str(path),
        "dataset_n_train": info.n_train,
        "dataset_n_test": info.n_test,
        "dataset_bytes": path.stat().st_size if path.exists() else -1,
        "dataset_sha256": info.content_sha256,  # "" for a dataset written before data files had one
    }


def write_model_file(
    path: Path, network, specs: list[LayerSpec], params_path: Path, attrs: dict, plugins: tuple[str, ...] = ()
) -> None:
    """path <- the model of `network` (built from `specs`) with the weights of params.h5, read
    COPY_CHUNK floats at a time. attrs: step, x_scale, the dataset_* keys (dataset_attrs).
    plugins: the [model] plugins modules whose layer types the specs may use."""
    import h5py

    plans, starts = [], []
    for index, (layer, block) in enumerate(zip(network.layers, network.param_slices)):
        start = block.start
        for name, shape in layer_tensors(layer):
            plans.append(DatasetPlan(f"layers/{index}/{name}", shape, "<f4"))
            starts.append(start)
            start += math.prod(shape)
    root = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "layers": specs_json(specs),
        "plugins": json.dumps(list(plugins)),
        "input_shape": np.asarray(network.input_shape, dtype=np.int64),
        "n_classes": network.n_classes,
        "n_params": network.n_params,
        **attrs,
    }
    groups = {f"layers/{index}": {"type": layer.kind} for index, layer in enumerate(network.layers)}
    with h5py.File(params_path, "r") as source, hdf5_stream(Path(path), plans, root, groups) as out:
        flat = source["params"]
        if flat.shape != (network.n_params,):
            raise CheckpointError(f"{params_path}: /params has shape {flat.shape}, the model needs {network.n_params}")
        for plan, start in zip(plans, starts):
            size = math.prod(plan.shape)
            for offset in range(0, size, COPY_CHUNK):
                stop = min(size, offset + COPY_CHUNK)
                out.write(plan.name, offset, flat[start + offset : start + stop])


@dataclasses.dataclass(frozen=True)
class ModelHeader:
    """A model file's root attributes, checked."""

    path: Path
    specs: list[LayerSpec]
    input_shape: tuple[int, ...]
    n_classes: int
    x_scale: float
    n_params: int
    step: int
    attrs: dict


def read_header(handle, path: Path) -> ModelHeader:
    """The root attributes of an open model file; CheckpointError names the file and the key."""
    attrs = {key: (value.item() if isinstance(value, np.generic) else value) for key, value in handle.attrs.items()}
    if attrs.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a distbelief model file (root attribute 'format' is {attrs.get('format')!r})"
        )
    if attrs.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: model file format_version {attrs.get('format_version')!r}; this version reads {FORMAT_VERSION}"
        )
    missing = [key for key in ("layers", "input_shape", "n_classes", "x_scale", "n_params", "step") if key not in attrs]
    if missing:
        raise CheckpointError(f"{path}: missing root attribute(s) {', '.join(missing)}")
    _import_plugins(attrs.get("plugins", "[]"), path)
    return ModelHeader(
        path=path,
        specs=specs_from_json(attrs["layers"], str(path)),
        input_shape=tuple(int(v) for v in np.asarray(attrs["input_shape"]).ravel()),
        n_classes=int(attrs["n_classes"]),
        x_scale=float(attrs["x_scale"]),
        n_params=int(attrs["n_params"]),
        step=int(attrs["step"]),
        attrs=attrs,
    )


def _import_plugins(text: str, path: Path) -> None:
    """Import the modules that register the file's own layer types (before its specs are read)."""
    try:
        names = json.loads(text)
    except ValueError:
        names = text
    _, problems = load_plugins(names, key=f"{path}: attribute 'plugins'")
    if problems:
        raise CheckpointError("; ".join(problems) + " (install the module, or put it on PYTHONPATH)")


def model_path(run_or_file: str | Path) -> Path:
    """RUN_DIR -> RUN_DIR/model.h5; a file is itself. UserInputError-style CheckpointError if absent."""
    path = Path(run_or_file)
    if path.is_dir():
        if not (path / MODEL_FILE).exists():
            raise CheckpointError(f"{path}: no {MODEL_FILE} (a run finished before model files existed, or not a run)")
        return path / MODEL_FILE
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or model file")
    return path


def tensor_table(handle, network, path: Path) -> list[tuple[str, int, tuple[int, ...]]]:
    """[(dataset name, canonical start, shape)] of every tensor, each checked to be in the file."""
    table = []
    for index, (layer, block) in enumerate(zip(network.layers, network.param_slices)):
        start = block.start
        for name, shape in layer_tensors(layer):
            key = f"layers/{index}/{name}"
            found = handle[key].shape if key in handle else "nothing"
            if found != shape:
                raise CheckpointError(f"{path}: /{key} should be {shape} float32, found {found}")
            table.append((key, start, shape))
            start += math.prod(shape)
    return table


def read_pieces(handle, network, path: Path, pieces: list[tuple[int, int, int]], out: np.ndarray) -> None:
    """out[position : position + length] <- canonical elements [start, start + length) for each
    piece (position, start, length) (model/partition.ParamOrder.segments): a partition's block,
    read a tensor's COPY_CHUNK floats at a time, skipping chunks that hold none of it."""
    pieces = sorted(pieces, key=lambda piece: piece[1])
    starts = [piece[1] for piece in pieces]
    for key, tensor_start, shape in tensor_table(handle, network, path):
        row = math.prod(shape[1:])
        rows = max(1, COPY_CHUNK // row)
        for r0 in range(0, shape[0], rows):
            lo, hi = tensor_start + r0 * row, tensor_start + min(shape[0], r0 + rows) * row
            data = None
            i = max(0, bisect.bisect_right(starts, lo) - 1)
            while i < len(pieces) and pieces[i][1] < hi:
                position, start, length = pieces[i]
                a, b = max(lo, start), min(hi, start + length)
                if a < b:
                    data = handle[key][r0 : r0 + rows].reshape(-1) if data is None else data
                    out[position + a - start : position + b - start] = data[a - lo : b - lo]
                i += 1
