"""Locally connected 2-D layer (no weight sharing), valid padding, square patch, stride.

Shapes (B = batch, C = in channels, F = filters, P = OH * OW output positions, K = C*patch*patch):
  x (B, C, H, W), y (B, F, OH, OW)        -- the public layout, batch-first as everywhere
  w (P, K, F): the filter bank of position p = oh * OW + ow, K ordered (c, i, j)
  bias (P, F)
Inside the kernels x is first copied to batch-last (C, H, W, B): a patch row (c, h, w0:w0+patch)
is then one contiguous run of patch * B values, so gathering the (K, B) patch matrix of a
position is a few vectorised copies, and BLAS does (F, K) @ (K, B) on a small buffer that stays
in cache. The layer's whole im2col matrix is never built. Serial over positions: the backward
scatter into dx overlaps between positions.
"""

import numpy as np
from numba import njit

# Numba's on-disk cache does not notice edits to these helpers in another file: after changing
# elementwise.py, delete distbelief_mpi/kernels/__pycache__/*.nbi/*.nbc (or touch this file).
from .elementwise import _activate, _slope_from_output


def local_out_size(size: int, patch: int, stride: int) -> int:
    """Valid-padding output length; 0 when the window does not fit."""
    return (size - patch) // stride + 1 if size >= patch else 0


@njit(cache=True, nogil=True)
def _to_batch_last(x):
    """(B, C, H, W) -> a new (C, H, W, B) array."""
    b_n, c_n, h_n, w_n = x.shape
    out = np.empty((c_n, h_n, w_n, b_n), dtype=x.dtype)
    for b in range(b_n):
        for c in range(c_n):
            for h in range(h_n):
                for w in range(w_n):
                    out[c, h, w, b] = x[b, c, h, w]
    return out


@njit(cache=True, inline="always")
def _gather_patches(xt, oh, ow, stride, patch, patches):
    """patches (K, B) <- the input patch under output position (oh, ow); xt (C, H, W, B)."""
    c_n, b_n = xt.shape[0], xt.shape[3]
    h0, w0 = oh * stride, ow * stride
    k = 0
    for c in range(c_n):
        for i in range(patch):
            for j in range(patch):
                for b in range(b_n):
                    patches[k, b] = xt[c, h0 + i, w0 + j, b]
                k += 1


@njit(cache=True, inline="always")
def _scatter_add_patches(d_patches, oh, ow, stride, patch, dxt):
    """dxt (C, H, W, B) += d_patches (K, B) at the patch under (oh, ow)."""
    c_n, b_n = dxt.shape[0], dxt.shape[3]
    h0, w0 = oh * stride, ow * stride
    k = 0
    for c in range(c_n):
        for i in range(patch):
            for j in range(patch):
                for b in range(b_n):
                    dxt[c, h0 + i, w0 + j, b] += d_patches[k, b]
                k += 1


@njit(cache=True, nogil=True)
def local_forward_(x, w, bias, stride, patch, kind, y):
    """y (B, F, OH, OW) <- act(local(x) + bias). See the module docstring for shapes."""
    b_n = x.shape[0]
    f_n, oh_n, ow_n = y.shape[1], y.shape[2], y.shape[3]
    if b_n == 0:
        return
    one = y.dtype.type(1)
    xt = _to_batch_last(x)
    patches = np.empty((w.shape[1], b_n), dtype=y.dtype)
    acc = np.empty((f_n, b_n), dtype=y.dtype)
    for oh in range(oh_n):
        for ow in range(ow_n):
            pos = oh * ow_n + ow
            _gather_patches(xt, oh, ow, stride, patch, patches)
            np.dot(w[pos].T, patches, acc)  # (F, K) @ (K, B)
            for f in range(f_n):
                for b in range(b_n):
                    y[b, f, oh, ow] = _activate(acc[f, b] + bias[pos, f], kind, one)


@njit(cache=True, nogil=True)
def local_backward_(x, w, y, dy, stride, patch, kind, grad_w, grad_bias, dx, need_dx):
    """Write grad_w (P, K, F), grad_bias (P, F) and, if need_dx, dx (B, C, H, W) (overwritten).

    y is the forward output (the activation gradient is taken from it); dy (B, F, OH, OW).
    """
    b_n, c_n, h_n, w_n = x.shape
    f_n, oh_n, ow_n = y.shape[1], y.shape[2], y.shape[3]
    if b_n == 0:
        grad_w[:] = 0
        grad_bias[:] = 0
        if need_dx:
            dx[:] = 0
        return
    one = y.dtype.type(1)
    xt = _to_batch_last(x)
    dxt = np.zeros((c_n, h_n, w_n, b_n) if need_dx else (0, 0, 0, 0), dtype=y.dtype)
    patches = np.empty((w.shape[1], b_n), dtype=y.dtype)
    d_patches = np.empty_like(patches)
    dz = np.empty((f_n, b_n), dtype=y.dtype)
    for oh in range(oh_n):
        for ow in range(ow_n):
            pos = oh * ow_n + ow
            for f in range(f_n):
                total = one - one
                for b in range(b_n):
                    g = dy[b, f, oh, ow] * _slope_from_output(y[b, f, oh, ow], kind, one)
                    dz[f, b] = g
                    total += g
                grad_bias[pos, f] = total
            _gather_patches(xt, oh, ow, stride, patch, patches)
            np.dot(patches, dz.T, grad_w[pos])  # (K, B) @ (B, F)
            if need_dx:
                np.dot(w[pos], dz, d_patches)  # (K, F) @ (F, B)
                _scatter_add_patches(d_patches, oh, ow, stride, patch, dxt)
    if need_dx:
        for b in range(b_n):
            for c in range(c_n):
                for h in range(h_n):
                    for w_ in range(w_n):
                        dx[b, c, h, w_] = dxt[c, h, w_, b]
