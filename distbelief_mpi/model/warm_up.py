"""PURE: load (or compile) a network's kernels on tiny copies of its layers.

A cold Numba kernel can take a second, long enough to stall the first timed steps, so every
training rank runs its kernels once before the start barrier. Numba specialises a kernel on
dtypes and array layouts, not sizes: a copy of each layer with one filter over an input the
size of one patch compiles the same code as the real layer, while holding nothing of the real
layer's size (a partition never builds the whole model to warm up).
"""

import numpy as np

from ..kernels import sgd_update_, softmax_xent
from .image_layers import LCN, L2Pool2D, LocallyConnected2D, MaxPool2D
from .layers import Dense, Layer, SoftmaxOutput

BATCH = 2


def tiny_copy(layer: Layer) -> Layer:
    """A layer of the same kind, activation and dtype with the smallest shapes that fit."""
    dtype = layer.dtype
    if isinstance(layer, SoftmaxOutput):
        return SoftmaxOutput((3,), 2, dtype)
    if isinstance(layer, Dense):
        return Dense((3,), 2, layer.activation, dtype)
    if isinstance(layer, LocallyConnected2D):
        return LocallyConnected2D((1, layer.patch, layer.patch), 1, layer.patch, layer.stride, layer.activation, dtype)
    if isinstance(layer, MaxPool2D | L2Pool2D):
        return type(layer)((1, layer.size, layer.size), layer.size, layer.stride, dtype)
    if isinstance(layer, LCN):
        return LCN((1, layer.size, layer.size), layer.size, dtype)
    raise TypeError(f"no tiny copy for a {type(layer).__name__} layer")


def warm_up_kernels(layers: list[Layer]) -> None:
    """Run forward and backward of a tiny copy of each layer, the loss and the SGD update."""
    dtype = layers[-1].dtype
    for layer in map(tiny_copy, layers):
        params = np.zeros(layer.n_params, dtype)
        y, cache = layer.forward(params, np.zeros((BATCH, *layer.in_shape), dtype))
        layer.backward(params, cache, np.zeros_like(y), np.empty_like(params), need_dx=True)
    logits, labels = np.zeros((BATCH, 2), dtype), np.zeros(BATCH, np.int32)
    softmax_xent(logits, labels, np.empty_like(logits), 1.0 / BATCH)
    tiny = np.zeros(3, dtype)
    sgd_update_(tiny, tiny.copy(), dtype.type(0))
