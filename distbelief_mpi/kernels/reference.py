"""Plain NumPy twins of every kernel: slow, obvious, used by the tests as the truth.

Each function returns new arrays instead of writing in place; the argument conventions and
shapes are those of the Numba kernel of the same name (without the trailing `_`).
"""

import numpy as np

from .lcn import LCN_EPS
from .pooling import L2POOL_EPS


def activate(z, kind):
    if kind == "relu":
        return np.maximum(z, 0)
    if kind == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if kind == "tanh":
        return np.tanh(z)
    return z.copy()


def slope_from_output(y, kind):
    return {
        "relu": lambda: (y > 0).astype(y.dtype),
        "sigmoid": lambda: y * (1 - y),
        "tanh": lambda: 1 - y * y,
        "none": lambda: np.ones_like(y),
    }[kind]()


def bias_activation(z, bias, kind):
    return activate(z + bias, kind)


def activation_grad_bias(dz, y, kind):
    g = dz * slope_from_output(y, kind)
    return g, g.sum(axis=0)


def sgd_update(params, grad, lr):
    return params - params.dtype.type(lr) * grad


def softmax_xent(logits, labels, scale):
    """Return (loss sum, n_correct, dlogits)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    loss = -log_probs[rows, labels].sum(dtype=np.float64)
    n_correct = int((logits.argmax(axis=1) == labels).sum()) if len(labels) else 0
    d = np.exp(log_probs)
    d[rows, labels] -= 1
    return float(loss), n_correct, d * scale


def local_patches(x, patch, stride):
    """x (B, C, H, W) -> (B, OH, OW, C*patch*patch), K ordered (c, i, j)."""
    win = np.lib.stride_tricks.sliding_window_view(x, (patch, patch), axis=(2, 3))
    win = win[:, :, ::stride, ::stride]  # (B, C, OH, OW, p, p)
    b, c, oh, ow = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(b, oh, ow, c * patch * patch)


def local_forward(x, w, bias, stride, patch, kind):
    """w (P, K, F), bias (P, F) -> y (B, F, OH, OW)."""
    cols = local_patches(x, patch, stride)
    b, oh, ow, k = cols.shape
    z = np.einsum("bpk,pkf->bpf", cols.reshape(b, oh * ow, k), w) + bias
    return activate(z, kind).reshape(b, oh, ow, w.shape[2]).transpose(0, 3, 1, 2)


def local_backward(x, w, y, dy, stride, patch, kind):
    """Return (grad_w, grad_bias, dx)."""
    cols = local_patches(x, patch, stride)
    b, oh, ow, k = cols.shape
    dz = (dy * slope_from_output(y, kind)).transpose(0, 2, 3, 1).reshape(b, oh * ow, w.shape[2])
    grad_w = np.einsum("bpk,bpf->pkf", cols.reshape(b, oh * ow, k), dz)
    d_cols = np.einsum("bpf,pkf->bpk", dz, w).reshape(b, oh, ow, x.shape[1], patch, patch)
    dx = np.zeros_like(x)
    for i in range(oh):
        for j in range(ow):
            dx[:, :, i * stride : i * stride + patch, j * stride : j * stride + patch] += d_cols[:, i, j]
    return grad_w, dz.sum(axis=0), dx


def _windows(x, size, stride):
    win = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(2, 3))
    return win[:, :, ::stride, ::stride]  # (B, C, OH, OW, size, size)


def maxpool_forward(x, size, stride):
    return _windows(x, size, stride).max(axis=(4, 5))


def maxpool_backward(x, dy, size, stride):
    """Route each dy to the first max of its window (row-major), like the kernel."""
    win = _windows(x, size, stride)
    b, c, oh, ow = win.shape[:4]
    flat = win.reshape(b, c, oh, ow, size * size).argmax(axis=4)
    dx = np.zeros_like(x)
    for idx in np.ndindex(b, c, oh, ow):
        i, j = divmod(int(flat[idx]), size)
        dx[idx[0], idx[1], idx[2] * stride + i, idx[3] * stride + j] += dy[idx]
    return dx


def l2pool_forward(x, size, stride):
    return np.sqrt((_windows(x, size, stride) ** 2).sum(axis=(4, 5)) + x.dtype.type(L2POOL_EPS))


def l2pool_backward(x, y, dy, size, stride):
    dx = np.zeros_like(x)
    g = dy / y
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            hs, ws = slice(i * stride, i * stride + size), slice(j * stride, j * stride + size)
            dx[:, :, hs, ws] += g[:, :, i, j, None, None] * x[:, :, hs, ws]
    return dx


def box_sum(planes, r):
    """Cropped (2r+1)^2 window sums of planes (..., H, W)."""
    h, w = planes.shape[-2:]
    out = np.zeros_like(planes)
    for i in range(h):
        for j in range(w):
            out[..., i, j] = planes[..., max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].sum(axis=(-2, -1))
    return out


def lcn_forward(x, size):
    """Return (y, d) following the definition in kernels/lcn.py."""
    c = x.shape[1]
    r = size // 2
    counts = c * box_sum(np.ones(x.shape[2:], dtype=x.dtype), r)
    m = box_sum(x.sum(axis=1), r) / counts
    v = x - m[:, None]
    d = np.sqrt(x.dtype.type(LCN_EPS) + box_sum((v * v).sum(axis=1), r) / counts)
    return v / d[:, None], d


def lcn_backward(x, dy, size):
    """Gradient by the chain rule written out on the forward quantities (recomputed)."""
    c = x.shape[1]
    r = size // 2
    counts = c * box_sum(np.ones(x.shape[2:], dtype=x.dtype), r)
    y, d = lcn_forward(x, size)
    v = y * d[:, None]
    g_d = -(dy * v).sum(axis=1) / d**2
    g_s = g_d * 0.5 / d
    g_q = box_sum(g_s / counts, r)
    g_v = dy / d[:, None] + 2 * v * g_q[:, None]
    g_m = -g_v.sum(axis=1)
    return (g_v + box_sum(g_m / counts, r)[:, None]).astype(x.dtype)


# -- parameter-server rules (kernels/server_rules.py) -------------------------------------
def sgd_apply(params_in, grad, lr):
    return params_in - params_in.dtype.type(lr) * grad


def adagrad_apply(params_in, grad, acc, gamma, eps):
    """Return (params_out, acc_out)."""
    acc_out = acc + grad * grad
    return params_in - params_in.dtype.type(gamma) * grad / (np.sqrt(acc_out) + acc.dtype.type(eps)), acc_out
