"""PURE: load (or compile) a network's kernels on tiny copies of its layers.

A cold Numba kernel can take a second, long enough to stall the first timed steps, so every
training rank runs its kernels once before the start barrier. Numba specialises a kernel on
dtypes and array layouts, not sizes: a copy of each layer with one filter over an input the
size of one patch compiles the same code as the real layer, while holding nothing of the real
layer's size (a partition never builds the whole model to warm up).
"""

import numpy as np

from ..kernels import sgd_update_, softmax_xent
from .layers import Layer

BATCH = 2


def warm_up_kernels(layers: list[Layer]) -> None:
    """Run forward and backward of a tiny copy of each layer (Layer.tiny_copy; layers with none,
    e.g. NumPy-only plugins, have nothing to compile), the loss and the SGD update."""
    dtype = layers[-1].dtype
    for layer in filter(None, (layer.tiny_copy() for layer in layers)):
        params = np.zeros(layer.n_params, dtype)
        y, cache = layer.forward(params, np.zeros((BATCH, *layer.in_shape), dtype))
        layer.backward(params, cache, np.zeros_like(y), np.empty_like(params), need_dx=True)
    logits, labels = np.zeros((BATCH, 2), dtype), np.zeros(BATCH, np.int32)
    softmax_xent(logits, labels, np.empty_like(logits), 1.0 / BATCH)
    tiny = np.zeros(3, dtype)
    sgd_update_(tiny, tiny.copy(), dtype.type(0))
