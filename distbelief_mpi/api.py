"""The Python API for a trained model: `load_model(run_or_file)` (docs/model_use.md).

from distbelief_mpi import load_model
model = load_model("runs/digits_mlp-20261126-101500")   # or ".../model.h5"
probs = model.predict(x)            # x (n, *input_shape) in the dataset's raw units
weights = model.params()            # {"layers.0.W": (64, 32) float32, ...}
"""

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint.model_file import ModelHeader, layer_tensors, model_path, read_header, tensor_table
from .errors import CheckpointError
from .model.network import Network, build_network, evaluation_batch
from .model.spec import LayerSpec


class Model:
    """A trained network from a model file: its layers, input shape, classes and weights."""

    def __init__(self, header: ModelHeader, network: Network, flat: np.ndarray):
        self.header, self.network, self._flat = header, network, flat

    @property
    def path(self) -> Path:
        """The model file."""
        return self.header.path

    @property
    def layers(self) -> list[LayerSpec]:
        """The hidden layers' specs ([model] layers); a softmax output over n_classes follows."""
        return list(self.header.specs)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape: (C, H, W) for images, (D,) for vectors."""
        return self.network.input_shape

    @property
    def n_classes(self) -> int:
        return self.network.n_classes

    @property
    def x_scale(self) -> float:
        """predict() multiplies raw inputs by this (the dataset's x_scale), as training did."""
        return self.header.x_scale

    @property
    def step(self) -> int:
        """The training step the weights come from."""
        return self.header.step

    def flat_params(self) -> np.ndarray:
        """(n_params,) float32, params.h5's layout (the network's own vector; do not modify)."""
        return self._flat

    def params(self) -> dict[str, np.ndarray]:
        """Named float32 copies of the weights in each layer's natural shape:
        {"layers.0.W": (D, U), "layers.0.b": (U,), ...} (layers without weights have none)."""
        named: dict[str, np.ndarray] = {}
        for index, (layer, block) in enumerate(zip(self.network.layers, self.network.param_slices)):
            start = block.start
            for name, shape in layer_tensors(layer):
                size = int(np.prod(shape))
                named[f"layers.{index}.{name}"] = self._flat[start : start + size].reshape(shape).copy()
                start += size
        return named

    def predict(
        self, x: np.ndarray, batch_size: int | None = None, on_batch: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        """(n, n_classes) float32 class probabilities of x (n, *input_shape) in the dataset's raw
        units (uint8 pixels, say): each batch is cast to float32 and multiplied by x_scale, as the
        trainer reads its data. batch_size: default as evaluations (network.evaluation_batch);
        on_batch(done, n) is called after each batch. ValueError on a wrong shape."""
        x = np.asarray(x)
        if x.ndim != 1 + len(self.input_shape) or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"x must be (n, {', '.join(map(str, self.input_shape))}), got {x.shape}")
        batch_size = batch_size or self.default_batch()
        out = np.empty((len(x), self.n_classes), dtype=np.float32)
        for start in range(0, len(x), batch_size):
            stop = min(len(x), start + batch_size)
            out[start:stop] = softmax(self.logits(x[start:stop]))
            if on_batch is not None:
                on_batch(stop, len(x))
        return out

    def default_batch(self) -> int:
        """Examples per batch predict() uses by default: as evaluations do (up to 1000, fewer for
        a model whose activations would pass 256 MB; model/network.evaluation_batch)."""
        return evaluation_batch(self.network.layers, self.n_classes)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(n, n_classes) float32 logits of one batch of raw inputs (no batching)."""
        scaled = np.asarray(x).astype(np.float32)  # a fresh array: the scale goes in place
        if self.x_scale != 1.0:
            scaled *= np.float32(self.x_scale)
        return self.network.predict_logits(self._flat, scaled)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (B, K) -> (B, K) float32, computed in float64 (no overflow: max shifted)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z.astype(np.float32)


def load_model(run_or_file: str | Path) -> Model:
    """The model of a finished run: RUN_DIR (its model.h5) or a model file's path.
    CheckpointError (exit 2 in the CLI) names the file and what is wrong with it."""
    path = model_path(run_or_file)
    with open_model_file(path) as (handle, header, network):
        flat = _read_flat(handle, network, path)
    return Model(header, network, flat)


@contextlib.contextmanager
def open_model_file(path: Path) -> Iterator[tuple[Any, ModelHeader, Network]]:
    """(open h5py file, checked header, the network it describes, without weights); every
    problem a CheckpointError naming the file."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            header = read_header(handle, path)
            network = build_network(header.specs, header.input_shape, header.n_classes, source=str(path))
            if header.n_params != network.n_params:
                raise CheckpointError(f"{path}: n_params {header.n_params}, but its layers hold {network.n_params}")
            yield handle, header, network
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the model file ({exc})") from None


def _read_flat(handle, network: Network, path: Path) -> np.ndarray:
    """(n_params,) float32: every layer's tensors flattened in order (params.h5's layout)."""
    flat = np.empty(network.n_params, dtype=np.float32)
    for key, start, shape in tensor_table(handle, network, path):
        handle[key].read_direct(flat[start : start + math.prod(shape)].reshape(shape))
    if not np.all(np.isfinite(flat)):
        raise CheckpointError(f"{path}: the weights hold NaN or Inf values")
    return flat
