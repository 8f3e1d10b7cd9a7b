"""Layer base class and the dense layers (hidden and softmax output).

Every layer reads its weights as views of one flat parameter vector and writes its gradient
into views of one flat gradient vector: `params_view` / `grad_view` are the layer's own
contiguous block (Network.param_slices). Activations are batch-first: x (B, *in_shape).
Work buffers are kept per (name, shape) and reused, so outputs returned by forward/backward
are overwritten by the next call with the same batch size: a layer is not re-entrant.
"""

import math

import numpy as np

from ..kernels import ACTIVATION_CODES, activation_grad_bias_, bias_activation_
from .init import uniform_at


class Layer:
    """Base: shapes, parameter count, work buffers. Subclasses implement the maths."""

    kind = "layer"
    n_params = 0

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


class Dense(Layer):
    """y = act(x_flat @ W + b). W (D, U) row-major then b (U,) in the flat vector; x (B, *in_shape)
    is flattened to (B, D). Same three GEMMs per step as torch.nn.Linear, no transposed copies."""

    kind = "dense"

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


class SoftmaxOutput(Dense):
    """The output layer: dense to n_classes logits (no activation); the network applies the
    softmax cross-entropy (kernels.softmax_xent) to its output."""

    kind = "output"

    def __init__(self, in_shape, n_classes: int, dtype):
        super().__init__(in_shape, n_classes, "none", dtype)

    def details(self) -> str:
        return f"{self.units} softmax"
