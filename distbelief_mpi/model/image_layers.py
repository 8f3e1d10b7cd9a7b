"""Layers over images x (B, C, H, W): locally connected, max / L2 pooling, contrast normalisation.

All keep the batch-first, channels-first layout (B, C, H, W) in and out; see the kernels for
the maths and the parameter layouts.
"""

import numpy as np

from ..kernels import (
    ACTIVATION_CODES,
    l2pool_backward_,
    l2pool_forward_,
    lcn_backward_,
    lcn_forward_,
    local_backward_,
    local_forward_,
    maxpool_backward_,
    maxpool_forward_,
)
from ..kernels.local import local_out_size
from .layers import Layer, init_limit, weights_then_zeros


class LocallyConnected2D(Layer):
    """Valid patch x patch windows at `stride`, every output position with its own filters.
    Flat block: W (P, K, F) then b (P, F), P = OH * OW, K = C * patch * patch ordered (c, i, j)."""

    kind = "local"

    def __init__(self, in_shape, filters: int, patch: int, stride: int, activation: str, dtype):
        c, h, w = in_shape
        oh, ow = local_out_size(h, patch, stride), local_out_size(w, patch, stride)
        super().__init__(in_shape, (filters, oh, ow), dtype)
        self.filters, self.patch, self.stride, self.activation = filters, patch, stride, activation
        self.code = ACTIVATION_CODES[activation]
        self.n_pos, self.k = oh * ow, c * patch * patch
        self.n_params = self.n_pos * self.k * filters + self.n_pos * filters

    def details(self) -> str:
        return f"{self.filters}f {self.patch}x{self.patch}/{self.stride} {self.activation}"

    def split(self, flat):
        n_w = self.n_pos * self.k * self.filters
        return (flat[:n_w].reshape(self.n_pos, self.k, self.filters), flat[n_w:].reshape(self.n_pos, self.filters))

    def init_range(self, seed, layer_index, start, stop, out):
        limit = init_limit(self.k, self.filters, self.activation)
        weights_then_zeros(seed, layer_index, start, stop, out, self.n_pos * self.k * self.filters, limit)

    def forward(self, params_view, x):
        weights, bias = self.split(params_view)
        y = self.buffer("y", (x.shape[0],) + self.out_shape)
        local_forward_(x, weights, bias, self.stride, self.patch, self.code, y)
        return y, (x, y)

    def backward(self, params_view, cache, dy, grad_view, need_dx):
        x, y = cache
        weights, _ = self.split(params_view)
        grad_w, grad_b = self.split(grad_view)
        dx = self.buffer("dx", x.shape) if need_dx else self.buffer("no_dx", (0, 0, 0, 0))
        local_backward_(x, weights, y, dy, self.stride, self.patch, self.code, grad_w, grad_b, dx, need_dx)
        return dx if need_dx else None


class _Pool(Layer):
    def __init__(self, in_shape, size: int, stride: int, dtype):
        c, h, w = in_shape
        out = (c, local_out_size(h, size, stride), local_out_size(w, size, stride))
        super().__init__(in_shape, out, dtype)
        self.size, self.stride = size, stride

    def details(self) -> str:
        return f"{self.size}x{self.size}/{self.stride}"


class MaxPool2D(_Pool):
    """Per-channel max over valid size x size windows; the gradient goes to the first max."""

    kind = "maxpool"

    def forward(self, params_view, x):
        y = self.buffer("y", (x.shape[0],) + self.out_shape)
        argmax = self.buffer("argmax", y.shape, np.int64)
        maxpool_forward_(x, self.size, self.stride, y, argmax)
        return y, (x.shape, argmax)

    def backward(self, params_view, cache, dy, grad_view, need_dx):
        if not need_dx:
            return None
        x_shape, argmax = cache
        dx = self.buffer("dx", x_shape)
        maxpool_backward_(dy, argmax, dx)
        return dx


class L2Pool2D(_Pool):
    """Per-channel y = sqrt(sum over the window of x^2 + 1e-6) (kernels.L2POOL_EPS = 1e-6)."""

    kind = "l2pool"

    def forward(self, params_view, x):
        y = self.buffer("y", (x.shape[0],) + self.out_shape)
        l2pool_forward_(x, self.size, self.stride, y)
        return y, (x, y)

    def backward(self, params_view, cache, dy, grad_view, need_dx):
        if not need_dx:
            return None
        x, y = cache
        dx = self.buffer("dx", x.shape)
        l2pool_backward_(x, y, dy, self.size, self.stride, dx)
        return dx


class LCN(Layer):
    """Local contrast normalisation, exactly as defined in kernels/lcn.py: subtract the mean over
    a size x size window (cropped at borders) across all channels, then divide by
    sqrt(1e-4 + mean over the same window of the squared result). Shape-preserving, no params."""

    kind = "lcn"

    def __init__(self, in_shape, size: int, dtype):
        super().__init__(in_shape, in_shape, dtype)
        self.size = size

    def details(self) -> str:
        return f"{self.size}x{self.size}"

    def forward(self, params_view, x):
        y = self.buffer("y", x.shape)
        d = self.buffer("d", (x.shape[0],) + self.in_shape[1:])
        lcn_forward_(x, self.size, y, d)
        return y, (y, d)

    def backward(self, params_view, cache, dy, grad_view, need_dx):
        if not need_dx:
            return None
        y, d = cache
        dx = self.buffer("dx", y.shape)
        lcn_backward_(y, d, dy, self.size, dx)
        return dx
