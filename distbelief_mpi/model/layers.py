"""Layer base class and the dense layers (hidden and softmax output).

A layer type is a Layer subclass registered under a name (model/registry.py): the class declares
its spec keys, builds itself from a spec and an input shape (from_spec), names its parameter
tensors (param_shapes), computes forward and backward, and may declare how it splits over a
replica's partitions (`partition` and its hooks, used by model/partition.py).

Every layer reads its weights as views of one flat parameter vector and writes its gradient
into views of one flat gradient vector: `params_view` / `grad_view` are the layer's own
contiguous block (Network.param_slices). Activations are batch-first: x (B, *in_shape).
Work buffers are kept per (name, shape) and reused, so outputs returned by forward/backward
are overwritten by the next call with the same batch size: a layer is not re-entrant.
"""

import math
from typing import ClassVar

import numpy as np

from ..kernels import ACTIVATION_CODES, activation_grad_bias_, bias_activation_
from .init import uniform_at
from .partition import Runs
from .registry import Key, register_layer
from .spec import ACTIVATIONS


class Layer:
    """Base: shapes, parameter count, work buffers. Subclasses implement the maths.

    A registered type (model/registry.py) sets the class attributes and overrides the hooks
    below; the network calls them once, when it is built, never per step."""

    kind = "layer"  # the registered name (set by register_layer)
    in_specs = True  # whether `[model] layers` may name it (register_layer sets it)
    keys: ClassVar[dict[str, Key]] = {}  # the spec keys the type takes
    help: ClassVar[str] = ""  # one line for messages and the job-spec reference
    # How it splits over P partitions (model/partition.py): None (it cannot; P > 1 is refused),
    # "units" (a vector output (U,) cut into P slices of units, each from the whole input: the
    # units_* hooks) or "image" (a (C, H, W) output cut into blocks, each from the input block its
    # windows reach: the image_* hooks and input_span).
    partition: ClassVar[str | None] = None
    computes_halo: ClassVar[bool] = False  # "image": its output covers its whole input block (LCN)
    n_params = 0

    @classmethod
    def from_spec(cls, spec, in_shape: tuple, dtype) -> "Layer":
        """The layer `spec` (model/spec.LayerSpec: spec.<key> for each declared key) describes,
        over inputs of in_shape (the previous layer's out_shape)."""
        raise NotImplementedError(f"layer type {cls.kind!r} does not define from_spec")

    @classmethod
    def spec_problems(cls, values: dict, where: str) -> list[str]:
        """Problems across keys (each key's type and range are checked already); where: "model.layers[i]"."""
        return []

    @classmethod
    def input_problem(cls, spec, in_shape: tuple, where: str) -> str | None:
        """Why a `spec` layer cannot take inputs of in_shape, or None if it can."""
        return None

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """{name: shape} of the layer's tensors in the order they lie in its flat block (their
        sizes add up to n_params): what exports name per-layer tensors by."""
        return {}

    def kept_bytes(self) -> int:
        """Bytes per example a step keeps besides the layer's output (an argmax, a divisor)."""
        return 0

    def tiny_copy(self) -> "Layer | None":
        """A copy with the smallest shapes that run the same compiled kernels (model/warm_up.py);
        None: nothing to compile (NumPy-only layers)."""
        return None

    def __init__(self, in_shape: tuple, out_shape: tuple, dtype):
        self.in_shape, self.out_shape, self.dtype = tuple(in_shape), tuple(out_shape), np.dtype(dtype)
        self._buffers: dict = {}

    def buffer(self, name: str, shape: tuple, dtype=None) -> np.ndarray:
        """A reusable uninitialised array; the same one comes back for the same name and shape."""
        key = (name, tuple(shape), dtype or self.dtype)
        buf = self._buffers.get(key)
        if buf is None:
            if len(self._buffers) > 16:  # many batch sizes seen (e.g. ragged eval): start over
                self._buffers.clear()
            buf = self._buffers[key] = np.empty(shape, dtype=dtype or self.dtype)
        return buf

    def init_range(self, seed: int, layer_index: int, start: int, stop: int, out: np.ndarray) -> None:
        """out (stop - start,) <- elements [start, stop) of this layer's initial block for `seed`
        (layer_index: its place in the network, which keys its random stream). Any range can be
        drawn alone (model/init.py). Layers without weights have nothing to draw."""
        out[:] = 0

    def init(self, params_view: np.ndarray, seed: int = 0, layer_index: int = 0) -> None:
        """params_view (n_params,) <- the whole initial block (a standalone layer: tests, benches)."""
        self.init_range(seed, layer_index, 0, self.n_params, params_view)

    def forward(self, params_view, x):
        """Return (y (B, *out_shape), cache for backward)."""
        raise NotImplementedError

    def backward(self, params_view, cache, dy, grad_view, need_dx: bool):
        """Write d loss / d params into grad_view; return d loss / d x (or None if not need_dx).

        dy (B, *out_shape) may be overwritten (it is always a work buffer of the network).
        """
        raise NotImplementedError

    def describe(self) -> str:
        shape = "x".join(str(s) for s in self.out_shape)
        return f"{self.kind:<8} {self.details():<28} out {shape:<12} {self.n_params:>12,} params"

    def details(self) -> str:
        return ""


def init_limit(fan_in: int, fan_out: int, activation: str) -> float:
    """He-uniform for relu (limit sqrt(6 / fan_in)), Glorot-uniform otherwise
    (limit sqrt(6 / (fan_in + fan_out)))."""
    denom = fan_in if activation == "relu" else fan_in + fan_out
    return math.sqrt(6.0 / max(denom, 1))


def weights_then_zeros(seed, layer_index, start, stop, out, n_weights: int, limit: float) -> None:
    """A block of n_weights uniform(-limit, limit) weights followed by zero biases: out (stop -
    start,) <- its elements [start, stop)."""
    split = min(max(n_weights, start), stop)  # weights in [start, split), biases in [split, stop)
    uniform_at(seed, layer_index, start, split, limit, out[: split - start])
    out[split - start :] = 0


ACTIVATION_KEY = Key(str, "relu", choices=ACTIVATIONS, help="relu, sigmoid, tanh or none")


@register_layer("dense")
class Dense(Layer):
    """y = act(x_flat @ W + b). W (D, U) row-major then b (U,) in the flat vector; x (B, *in_shape)
    is flattened to (B, D). Same three GEMMs per step as torch.nn.Linear, no transposed copies."""

    keys = {"units": Key(int, None, minimum=1, help="output units"), "activation": ACTIVATION_KEY}
    help = "fully connected: units, activation (relu, sigmoid, tanh or none)"
    partition = "units"

    @classmethod
    def from_spec(cls, spec, in_shape, dtype):
        return Dense(in_shape, spec.units, spec.activation, dtype)

    def param_shapes(self):
        return {"W": (self.n_in, self.units), "b": (self.units,)}

    def tiny_copy(self):
        return Dense((3,), 2, self.activation, self.dtype)

    def units_sublayer(self, units: int) -> Layer:
        """The layer computing `units` of the output units (from the whole input)."""
        return Dense(self.in_shape, units, self.activation, self.dtype)  # the output layer's is "none"

    def units_param_runs(self, u0: int, u1: int) -> tuple:
        """Units [u0, u1)'s elements of the block, in the sublayer's order: columns [u0, u1) of
        W (D, U), then b[u0:u1]."""
        n_w = self.n_in * self.units
        return (Runs(u0, u1 - u0, self.units, self.n_in), Runs(n_w + u0, u1 - u0, 0, 1))

    def __init__(self, in_shape, units: int, activation: str, dtype):
        super().__init__(in_shape, (units,), dtype)
        self.n_in, self.units, self.activation = int(np.prod(in_shape)), units, activation
        self.code = ACTIVATION_CODES[activation]
        self.n_params = self.n_in * units + units

    def details(self) -> str:
        return f"{self.units} {self.activation}"

    def split(self, flat):
        """(W (D, U), b (U,)) views of a params or grad block."""
        n_w = self.n_in * self.units
        return flat[:n_w].reshape(self.n_in, self.units), flat[n_w:]

    def init_range(self, seed, layer_index, start, stop, out):
        limit = init_limit(self.n_in, self.units, self.activation)
        weights_then_zeros(seed, layer_index, start, stop, out, self.n_in * self.units, limit)

    def forward(self, params_view, x):
        weights, bias = self.split(params_view)
        x2 = x.reshape(x.shape[0], self.n_in)  # (B, D), a view for contiguous x
        y = self.buffer("y", (x.shape[0], self.units))
        np.matmul(x2, weights, out=y)  # (B, D) @ (D, U)
        bias_activation_(y, bias, self.code)
        return y, (x2, y)

    def backward(self, params_view, cache, dy, grad_view, need_dx):
        x2, y = cache
        weights, _ = self.split(params_view)
        grad_w, grad_b = self.split(grad_view)
        activation_grad_bias_(dy, y, self.code, grad_b)  # dy <- dz = dy * act'(y), in place
        np.matmul(x2.T, dy, out=grad_w)  # (D, B) @ (B, U): BLAS transposes, no copy
        if not need_dx:
            return None
        dx = self.buffer("dx", (dy.shape[0], self.n_in))
        np.matmul(dy, weights.T, out=dx)  # (B, U) @ (U, D)
        return dx.reshape((dy.shape[0],) + self.in_shape)


@register_layer("output", in_specs=False)
class SoftmaxOutput(Dense):
    """The output layer: dense to n_classes logits (no activation); the network applies the
    softmax cross-entropy (kernels.softmax_xent) to its output. The network appends it."""

    keys: ClassVar[dict[str, Key]] = {}
    help = "the softmax output over the classes (appended by the network)"

    def __init__(self, in_shape, n_classes: int, dtype):
        super().__init__(in_shape, n_classes, "none", dtype)

    def tiny_copy(self):
        return SoftmaxOutput((3,), 2, self.dtype)

    def details(self) -> str:
        return f"{self.units} softmax"
