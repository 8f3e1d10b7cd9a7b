"""Layer types a user would write, registered from outside the package: `[model] plugins =
["tests.plugins.user_layers"]`. The same code as docs/custom_layers.md's walk-through.

scale        y = s * x + t elementwise, s and t of the input's shape; declares no split.
nobias_dense y = act(x_flat @ W), W (D, U); splits over partitions by output units.
"""

import math

import numpy as np

from distbelief_mpi.model.init import uniform_at
from distbelief_mpi.model.layers import ACTIVATION_KEY, Layer, init_limit
from distbelief_mpi.model.partition import Runs
from distbelief_mpi.model.registry import Key, register_layer

_ACT = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z))}
_DACT = {"relu": lambda y: y > 0, "tanh": lambda y: 1 - y * y, "sigmoid": lambda y: y * (1 - y)}


@register_layer("scale")
class Scale(Layer):
    """Flat block: s (in_shape) then t (in_shape). NumPy only: no kernels to warm up."""

    keys = {"init": Key(float, 1.0, help="the starting factor s")}
    help = "elementwise y = s * x + t, learned s and t of the input's shape: init (starting s)"

    def __init__(self, in_shape, init: float, dtype):
        super().__init__(in_shape, in_shape, dtype)
        self.start, self.n = init, math.prod(in_shape)
        self.n_params = 2 * self.n

    @classmethod
    def from_spec(cls, spec, in_shape, dtype):
        return cls(in_shape, spec.init, dtype)

    def param_shapes(self):
        return {"s": self.in_shape, "t": self.in_shape}

    def init_range(self, seed, layer_index, start, stop, out):
        positions = np.arange(start, stop)  # [0, n): s, [n, 2n): t
        out[:] = np.where(positions < self.n, self.start, 0.0)

    def forward(self, params_view, x):
        s, t = (params_view[: self.n].reshape(self.in_shape), params_view[self.n :].reshape(self.in_shape))
        y = self.buffer("y", x.shape)
        np.multiply(x, s, out=y)
        y += t
        return y, x

    def backward(self, params_view, x, dy, grad_view, need_dx):
        grad_view[: self.n] = (dy * x).sum(axis=0).ravel()
        grad_view[self.n :] = dy.sum(axis=0).ravel()
        if not need_dx:
            return None
        return dy * params_view[: self.n].reshape(self.in_shape)


@register_layer("nobias_dense")
class NoBiasDense(Layer):
    """y = act(x_flat @ W), W (D, U) row-major: the flat block is W alone."""

    keys = {"units": Key(int, None, minimum=1, help="output units"), "activation": ACTIVATION_KEY}
    help = "fully connected without bias: units, activation (relu, sigmoid, tanh or none)"
    partition = "units"  # each partition computes a slice of the units from the whole input

    def __init__(self, in_shape, units: int, activation: str, dtype):
        super().__init__(in_shape, (units,), dtype)
        self.n_in, self.units, self.activation = math.prod(in_shape), units, activation
        self.n_params = self.n_in * units

    @classmethod
    def from_spec(cls, spec, in_shape, dtype):
        return cls(in_shape, spec.units, spec.activation, dtype)

    def param_shapes(self):
        return {"W": (self.n_in, self.units)}

    def init_range(self, seed, layer_index, start, stop, out):
        uniform_at(seed, layer_index, start, stop, init_limit(self.n_in, self.units, self.activation), out)

    def forward(self, params_view, x):
        x2 = x.reshape(len(x), self.n_in)  # (B, D)
        z = x2 @ params_view.reshape(self.n_in, self.units)  # (B, U)
        y = _ACT[self.activation](z) if self.activation != "none" else z
        return y, (x2, y)

    def backward(self, params_view, cache, dy, grad_view, need_dx):
        x2, y = cache
        dz = dy * _DACT[self.activation](y) if self.activation != "none" else dy  # (B, U)
        grad_view.reshape(self.n_in, self.units)[...] = x2.T @ dz
        if not need_dx:
            return None
        return (dz @ params_view.reshape(self.n_in, self.units).T).reshape((len(dy), *self.in_shape))

    # -- the split: partition p computes units [u0, u1) ---------------------------------------
    def units_sublayer(self, units: int) -> Layer:
        return NoBiasDense(self.in_shape, units, self.activation, self.dtype)

    def units_param_runs(self, u0: int, u1: int) -> tuple:
        """Columns [u0, u1) of W (D, U): D runs of u1 - u0 elements, U apart."""
        return (Runs(u0, u1 - u0, self.units, self.n_in),)
