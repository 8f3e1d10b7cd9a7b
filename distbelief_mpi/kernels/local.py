"""Locally connected 2-D layer (no weight sharing), valid padding, square patch, stride.

Shapes (B = batch, C = in channels, F = filters, P = OH * OW output positions, K = C*patch*patch):
  x (B, C, H, W), y (B, F, OH, OW)        -- the public layout, batch-first as everywhere
  w (P, K, F): the filter bank of position p = oh * OW + ow, K ordered (c, i, j)
  bias (P, F)
Inside the kernels x is first copied to batch-last (C, H, W, B): a patch row (c, h, w0:w0+patch)
is then one contiguous run of patch * B values, so gathering the (K, B) patch matrix of a
position is a few vectorised copies, and BLAS does (F, K) @ (K, B) on a small buffer that stays
in cache. The layer's whole im2col matrix is never built.

Threads (docs/architecture.md, "Threads in a rank"): Numba `prange` over output rows, each thread
calling a one-thread BLAS per position (`blas_single_threaded`). The forward pass, dz, dW and db
are per position, so independent. The scatter of d patches into dx overlaps between positions up
to patch - stride input rows, so dx is built in two colours of output-row chunks: chunks at least
ceil(patch / stride) - 1 rows long, even chunks in parallel, then odd ones; two chunks of one
colour never touch the same input row. The chunks depend on the geometry only, not on the thread
count, so every result is bitwise the same on 1, 2 or 3 threads (tests/unit/test_kernel_threads.py).
"""

import numpy as np
from numba import njit, prange

# Numba's on-disk cache does not notice edits to these helpers in another file: after changing
# elementwise.py, delete distbelief_mpi/kernels/__pycache__/*.nbi/*.nbc (or touch this file).
from .elementwise import _activate, _slope_from_output
from .thread_pool import blas_single_threaded


def local_out_size(size: int, patch: int, stride: int) -> int:
    """Valid-padding output length; 0 when the window does not fit."""
    return (size - patch) // stride + 1 if size >= patch else 0


def local_forward_(x, w, bias, stride, patch, kind, y):
    """y (B, F, OH, OW) <- act(local(x) + bias). See the module docstring for shapes."""
    with blas_single_threaded():
        _local_forward(x, w, bias, stride, patch, kind, y)


def local_backward_(x, w, y, dy, stride, patch, kind, grad_w, grad_bias, dx, need_dx):
    """Write grad_w (P, K, F), grad_bias (P, F) and, if need_dx, dx (B, C, H, W) (overwritten).

    y is the forward output (the activation gradient is taken from it); dy (B, F, OH, OW).
    """
    with blas_single_threaded():
        _local_backward(x, w, y, dy, stride, patch, kind, grad_w, grad_bias, dx, need_dx)


@njit(cache=True, nogil=True, parallel=True)
def _to_batch_last(x):
    """(B, C, H, W) -> a new (C, H, W, B) array; threads over (c, h) planes of the output."""
    b_n, c_n, h_n, w_n = x.shape
    out = np.empty((c_n, h_n, w_n, b_n), dtype=x.dtype)
    for ch in prange(c_n * h_n):
        c, h = ch // h_n, ch % h_n
        for b in range(b_n):
            for w in range(w_n):
                out[c, h, w, b] = x[b, c, h, w]
    return out


@njit(cache=True, nogil=True, parallel=True)
def _from_batch_last_(xt, x):
    """x (B, C, H, W) <- xt (C, H, W, B); threads over (b, c) planes of x."""
    c_n, h_n, w_n, b_n = xt.shape
    for bc in prange(b_n * c_n):
        b, c = bc // c_n, bc % c_n
        for h in range(h_n):
            for w in range(w_n):
                x[b, c, h, w] = xt[c, h, w, b]


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


@njit(cache=True, nogil=True, parallel=True)
def _local_forward(x, w, bias, stride, patch, kind, y):
    b_n = x.shape[0]
    f_n, oh_n, ow_n = y.shape[1], y.shape[2], y.shape[3]
    if b_n == 0:
        return
    one = y.dtype.type(1)
    xt = _to_batch_last(x)
    for oh in prange(oh_n):
        patches = np.empty((w.shape[1], b_n), dtype=y.dtype)  # per thread: (K, B)
        acc = np.empty((f_n, b_n), dtype=y.dtype)
        for ow in range(ow_n):
            pos = oh * ow_n + ow
            _gather_patches(xt, oh, ow, stride, patch, patches)
            np.dot(w[pos].T, patches, acc)  # (F, K) @ (K, B)
            for f in range(f_n):
                for b in range(b_n):
                    y[b, f, oh, ow] = _activate(acc[f, b] + bias[pos, f], kind, one)


@njit(cache=True, nogil=True, parallel=True)
def _local_backward(x, w, y, dy, stride, patch, kind, grad_w, grad_bias, dx, need_dx):
    b_n, c_n, h_n, w_n = x.shape
    f_n, oh_n, ow_n = y.shape[1], y.shape[2], y.shape[3]
    if b_n == 0:
        grad_w[:] = 0
        grad_bias[:] = 0
        if need_dx:
            dx[:] = 0
        return
    xt = _to_batch_last(x)
    dz = np.empty((oh_n * ow_n, f_n, b_n), dtype=y.dtype)  # (P, F, B), kept for dx
    for oh in prange(oh_n):
        patches = np.empty((w.shape[1], b_n), dtype=y.dtype)  # per thread: (K, B)
        for ow in range(ow_n):
            pos = oh * ow_n + ow
            _dz_and_bias_grad_(y, dy, oh, ow, kind, dz[pos], grad_bias[pos])
            _gather_patches(xt, oh, ow, stride, patch, patches)
            np.dot(patches, dz[pos].T, grad_w[pos])  # (K, B) @ (B, F)
    if need_dx:
        dxt = np.zeros((c_n, h_n, w_n, b_n), dtype=y.dtype)
        rows = _dx_chunk_rows(patch, stride)
        n_chunks = (oh_n + rows - 1) // rows
        for colour in range(2):
            for half in prange((n_chunks - colour + 1) // 2):
                d_patches = np.empty((w.shape[1], b_n), dtype=y.dtype)  # per thread: (K, B)
                first = (2 * half + colour) * rows
                for oh in range(first, min(oh_n, first + rows)):
                    for ow in range(ow_n):
                        pos = oh * ow_n + ow
                        np.dot(w[pos], dz[pos], d_patches)  # (K, F) @ (F, B)
                        _scatter_add_patches(d_patches, oh, ow, stride, patch, dxt)
        _from_batch_last_(dxt, dx)


@njit(cache=True, inline="always")
def _dz_and_bias_grad_(y, dy, oh, ow, kind, dz, grad_bias):
    """dz (F, B) <- dy * act'(y) at output position (oh, ow); grad_bias (F,) <- its sum over B."""
    f_n, b_n = dz.shape
    one = y.dtype.type(1)
    for f in range(f_n):
        total = one - one
        for b in range(b_n):
            g = dy[b, f, oh, ow] * _slope_from_output(y[b, f, oh, ow], kind, one)
            dz[f, b] = g
            total += g
        grad_bias[f] = total


@njit(cache=True, inline="always")
def _dx_chunk_rows(patch, stride):
    """Output rows per dx chunk: chunks two apart then cover disjoint input rows.

    Chunks [a0, a1) and [c0, c1) with c0 >= a1 + L (one chunk of L rows between) write input rows
    [a0 s, (a1 - 1) s + patch) and [c0 s, ...): disjoint iff (L + 1) s >= patch.
    """
    return max(1, (patch + stride - 1) // stride - 1)
