"""Layers over images x (B, C, H, W): locally connected, max / L2 pooling, contrast normalisation.

All keep the batch-first, channels-first layout (B, C, H, W) in and out; see the kernels for
the maths and the parameter layouts. Each is a registered layer type (model/registry.py) that
splits over partitions in blocks of its output map ("image", model/partition.py).
"""

import math

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
from .layers import ACTIVATION_KEY, Layer, init_limit, weights_then_zeros
from .partition import Runs
from .partition_geometry import Rect
from .registry import Key, register_layer


class ImageLayer(Layer):
    """A layer over (C, H, W) maps whose output position (r, c) reads the input window of `window`
    rows and columns from (r * stride, c * stride): split in blocks of its output map, each
    partition reading its block's windows (a halo from its neighbours)."""

    partition = "image"
    stride: int  # set by the windowed layers' __init__ (LCN has no stride: it overrides input_span)
    window_key = ""  # the spec key of the window's size ("" for LCN: it has no window to fit)
    window_word = ""

    @classmethod
    def input_problem(cls, spec, in_shape, where):
        if len(in_shape) != 3:
            dims = "x".join(map(str, in_shape))
            return (
                f"{where}: a {spec.type!r} layer needs an image input (C, H, W), got a vector "
                f"of {dims}; put image layers before any dense layer"
            )
        h, w = in_shape[1], in_shape[2]
        window = getattr(spec, cls.window_key) if cls.window_key else 0
        if window > h or window > w:
            return f"{where}: {cls.window_word} {window} does not fit a {h}x{w} input"
        return None

    @property
    def window(self) -> int:
        return getattr(self, self.window_key)

    def input_span(self, lo: int, hi: int, n: int) -> tuple[int, int]:
        """Input positions [a, b) along one axis (n long) that output positions [lo, hi) read."""
        return lo * self.stride, (hi - 1) * self.stride + self.window

    def image_sublayer(self, in_shape: tuple) -> Layer:
        """The same layer over a partition's input block of in_shape (C, rows, columns)."""
        raise NotImplementedError

    def image_param_runs(self, rect: Rect) -> tuple:
        """The elements of the block output block `rect` computes with, in its sublayer's order."""
        return ()


@register_layer("local")
class LocallyConnected2D(ImageLayer):
    """Valid patch x patch windows at `stride`, every output position with its own filters.
    Flat block: W (P, K, F) then b (P, F), P = OH * OW, K = C * patch * patch ordered (c, i, j)."""

    keys = {
        "filters": Key(int, None, minimum=1, help="filters per output position"),
        "patch": Key(int, None, minimum=1, help="window rows and columns"),
        "stride": Key(int, 1, minimum=1),
        "activation": ACTIVATION_KEY,
    }
    help = "locally connected 2-D, no weight sharing: filters, patch, stride, activation"
    window_key, window_word = "patch", "patch"

    @classmethod
    def from_spec(cls, spec, in_shape, dtype):
        return LocallyConnected2D(in_shape, spec.filters, spec.patch, spec.stride, spec.activation, dtype)

    def param_shapes(self):
        return {"W": (self.n_pos, self.k, self.filters), "b": (self.n_pos, self.filters)}

    def tiny_copy(self):
        shape = (1, self.patch, self.patch)
        return LocallyConnected2D(shape, 1, self.patch, self.stride, self.activation, self.dtype)

    def image_sublayer(self, in_shape):
        return LocallyConnected2D(in_shape, self.filters, self.patch, self.stride, self.activation, self.dtype)

    def image_param_runs(self, rect):
        """The positions of output block rect (rows [r0, r1) x columns [c0, c1)): their W rows
        (pos, K, F), then their b rows (pos, F); one run per block row, or one in all for whole
        rows (consecutive positions)."""
        r0, r1, c0, c1 = rect
        ow = self.out_shape[2]
        n_w, per_w, f = self.n_pos * self.k * self.filters, self.k * self.filters, self.filters
        if (c0, c1) == (0, ow):
            p0, p1 = r0 * ow, r1 * ow
            return (Runs(p0 * per_w, (p1 - p0) * per_w, 0, 1), Runs(n_w + p0 * f, (p1 - p0) * f, 0, 1))
        first, width, rows = r0 * ow + c0, c1 - c0, r1 - r0
        return (Runs(first * per_w, width * per_w, ow * per_w, rows), Runs(n_w + first * f, width * f, ow * f, rows))

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


POOL_KEYS = {
    "size": Key(int, None, minimum=1, help="window rows and columns"),
    "stride": Key(int, 0, minimum=0, note=" (0 means = size)"),
}


class _Pool(ImageLayer):
    keys = POOL_KEYS
    window_key, window_word = "size", "pool size"

    @classmethod
    def from_spec(cls, spec, in_shape, dtype):
        return cls(in_shape, spec.size, spec.pool_stride, dtype)

    def tiny_copy(self):
        return type(self)((1, self.size, self.size), self.size, self.stride, self.dtype)

    def image_sublayer(self, in_shape):
        return type(self)(in_shape, self.size, self.stride, self.dtype)

    def __init__(self, in_shape, size: int, stride: int, dtype):
        c, h, w = in_shape
        out = (c, local_out_size(h, size, stride), local_out_size(w, size, stride))
        super().__init__(in_shape, out, dtype)
        self.size, self.stride = size, stride

    def details(self) -> str:
        return f"{self.size}x{self.size}/{self.stride}"


@register_layer("maxpool")
class MaxPool2D(_Pool):
    """Per-channel max over valid size x size windows; the gradient goes to the first max."""

    help = "max pooling per channel: size, stride (0 = size)"

    def kept_bytes(self):
        return 8 * math.prod(self.out_shape)  # the int64 argmax

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


@register_layer("l2pool")
class L2Pool2D(_Pool):
    """Per-channel y = sqrt(sum over the window of x^2 + 1e-6) (kernels.L2POOL_EPS = 1e-6)."""

    help = "L2 pooling per channel, sqrt(sum x^2): size, stride (0 = size)"

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


@register_layer("lcn")
class LCN(ImageLayer):
    """Local contrast normalisation, exactly as defined in kernels/lcn.py: subtract the mean over
    a size x size window (cropped at borders) across all channels, then divide by
    sqrt(1e-4 + mean over the same window of the squared result). Shape-preserving, no params.
    A partition computes it over its whole input block (computes_halo) and keeps its own block."""

    keys = {"size": Key(int, 5, minimum=1, help="window rows and columns (odd)")}
    help = "local contrast normalisation over a size x size window (odd) across channels"
    computes_halo = True

    @classmethod
    def spec_problems(cls, values, where):
        if values["size"] % 2 == 0:
            return [f"{where}.size: a contrast-normalisation window must be odd, got {values['size']}"]
        return []

    @classmethod
    def from_spec(cls, spec, in_shape, dtype):
        return LCN(in_shape, spec.size, dtype)

    def kept_bytes(self):
        return 4 * math.prod(self.in_shape[1:])  # the float32 divisor per pixel

    def tiny_copy(self):
        return LCN((1, self.size, self.size), self.size, self.dtype)

    def input_span(self, lo, hi, n):
        """2 * (size // 2) beyond [lo, hi) on each side (its mean and its variance each look
        size // 2 away), cropped to the map."""
        halo = 2 * (self.size // 2)
        return max(0, lo - halo), min(n, hi + halo)

    def image_sublayer(self, in_shape):
        return LCN(in_shape, self.size, self.dtype)

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
