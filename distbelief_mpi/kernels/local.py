"""Locally connected 2-D layer (no weight sharing), valid padding, square patch, stride.

Shapes (B = batch, C = in channels, F = filters, P = OH * OW output positions, K = C*patch*patch):
  x (B, C, H, W), y (B, F, OH, OW)        -- batch-first, channels-first, as everywhere
  w (P, K, F): the filter bank of position p = oh * OW + ow, K ordered (c, i, j)
  bias (P, F)
Per position we gather the (B, K) patch matrix into a small contiguous buffer that stays in
cache and let BLAS do (B, K) @ (K, F); the im2col matrix of the whole layer is never built.
Serial over positions: the backward scatter into dx overlaps between positions.
"""

import numpy as np
from numba import njit

from .elementwise import _activate, _slope_from_output


def local_out_size(size: int, patch: int, stride: int) -> int:
    """Valid-padding output length; 0 or less means the patch does not fit."""
    return (size - patch) // stride + 1 if size >= patch else 0


@njit(cache=True, inline="always")
def _gather_patches(x, oh, ow, stride, patch, patches):
    """patches (B, K) <- the input patch under output position (oh, ow) for every example."""
    b_n, c_n = x.shape[0], x.shape[1]
    h0, w0 = oh * stride, ow * stride
    for b in range(b_n):
        k = 0
        for c in range(c_n):
            for i in range(patch):
                for j in range(patch):
                    patches[b, k] = x[b, c, h0 + i, w0 + j]
                    k += 1


@njit(cache=True)
def local_forward_(x, w, bias, stride, patch, kind, y):
    """y (B, F, OH, OW) <- act(local(x) + bias). See the module docstring for shapes."""
    b_n = x.shape[0]
    f_n, oh_n, ow_n = y.shape[1], y.shape[2], y.shape[3]
    k_n = w.shape[1]
    if b_n == 0:
        return
    one = y.dtype.type(1)
    patches = np.empty((b_n, k_n), dtype=y.dtype)
    acc = np.empty((b_n, f_n), dtype=y.dtype)
    for oh in range(oh_n):
        for ow in range(ow_n):
            pos = oh * ow_n + ow
            _gather_patches(x, oh, ow, stride, patch, patches)
            np.dot(patches, w[pos], acc)  # (B, K) @ (K, F)
            for b in range(b_n):
                for f in range(f_n):
                    y[b, f, oh, ow] = _activate(acc[b, f] + bias[pos, f], kind, one)


@njit(cache=True)
def local_backward_(x, w, y, dy, stride, patch, kind, grad_w, grad_bias, dx, need_dx):
    """Write grad_w (P, K, F), grad_bias (P, F) and, if need_dx, dx (B, C, H, W) (overwritten).

    y is the forward output (the activation gradient is taken from it); dy (B, F, OH, OW).
    """
    b_n, c_n = x.shape[0], x.shape[1]
    f_n, oh_n, ow_n = y.shape[1], y.shape[2], y.shape[3]
    k_n = w.shape[1]
    if need_dx:
        dx[:] = 0
    if b_n == 0:
        grad_w[:] = 0
        grad_bias[:] = 0
        return
    one = y.dtype.type(1)
    patches = np.empty((b_n, k_n), dtype=y.dtype)
    d_patches = np.empty((b_n, k_n), dtype=y.dtype)
    dz = np.empty((b_n, f_n), dtype=y.dtype)
    for oh in range(oh_n):
        for ow in range(ow_n):
            pos = oh * ow_n + ow
            grad_bias[pos, :] = 0
            for b in range(b_n):
                for f in range(f_n):
                    g = dy[b, f, oh, ow] * _slope_from_output(y[b, f, oh, ow], kind, one)
                    dz[b, f] = g
                    grad_bias[pos, f] += g
            _gather_patches(x, oh, ow, stride, patch, patches)
            np.dot(patches.T, dz, grad_w[pos])  # (K, B) @ (B, F)
            if need_dx:
                np.dot(dz, w[pos].T, d_patches)  # (B, F) @ (F, K)
                _scatter_add_patches(d_patches, oh, ow, stride, patch, dx)


@njit(cache=True, inline="always")
def _scatter_add_patches(d_patches, oh, ow, stride, patch, dx):
    b_n, c_n = dx.shape[0], dx.shape[1]
    h0, w0 = oh * stride, ow * stride
    for b in range(b_n):
        k = 0
        for c in range(c_n):
            for i in range(patch):
                for j in range(patch):
                    dx[b, c, h0 + i, w0 + j] += d_patches[b, k]
                    k += 1
