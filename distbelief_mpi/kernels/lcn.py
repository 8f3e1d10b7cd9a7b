"""Local contrast normalisation (subtractive + divisive), smooth everywhere (no max).

For x (B, C, H, W) and an odd window size n = 2r + 1, per example:
  window(h, w) = rows [h-r, h+r] x cols [w-r, w+r] cropped to the image, across ALL channels;
  N(h, w)      = C * (number of pixels in the cropped window)
  m(h, w)      = sum_{c, window(h, w)} x / N(h, w)              (local mean)
  v[c, h, w]   = x[c, h, w] - m(h, w)
  s(h, w)      = sum_{c, window(h, w)} v^2 / N(h, w)            (local variance of v)
  d(h, w)      = sqrt(LCN_EPS + s(h, w))
  y[c, h, w]   = v[c, h, w] / d(h, w)
The cropped box sum A is symmetric (h' in window(h) iff h in window(h')), which the backward
pass uses: the adjoint of f -> A(f) / N is g -> A(g / N).

Threads: Numba `prange` over examples, each with its own (H, W) scratch planes; examples are
independent, so every result is bitwise the same on any thread count.
"""

import numpy as np
from numba import njit, prange

LCN_EPS = 1e-4


@njit(cache=True, nogil=True)
def _box_sum_(src, r, tmp, out):
    """out (H, W) <- sum of src (H, W) over the cropped (2r+1)^2 window; tmp (H, W) scratch."""
    h_n, w_n = src.shape
    for h in range(h_n):
        for w in range(w_n):
            acc = src[h, w] * 0
            for j in range(max(0, w - r), min(w_n, w + r + 1)):
                acc += src[h, j]
            tmp[h, w] = acc
    for h in range(h_n):
        for w in range(w_n):
            out[h, w] = 0
        for i in range(max(0, h - r), min(h_n, h + r + 1)):
            for w in range(w_n):
                out[h, w] += tmp[i, w]


@njit(cache=True, nogil=True)
def _inverse_counts(c_n, h_n, w_n, r, like):
    """(H, W) array of 1 / N(h, w), in the dtype of the array `like`."""
    inv = np.empty((h_n, w_n), dtype=like.dtype)
    one = like.dtype.type(1)
    for h in range(h_n):
        rows = min(h_n, h + r + 1) - max(0, h - r)
        for w in range(w_n):
            cols = min(w_n, w + r + 1) - max(0, w - r)
            inv[h, w] = one / (c_n * rows * cols)
    return inv


@njit(cache=True, nogil=True, parallel=True)
def lcn_forward_(x, size, y, d):
    """y (B, C, H, W) <- LCN(x); d (B, H, W) <- the divisor, kept for the backward pass."""
    b_n, c_n, h_n, w_n = x.shape
    r = size // 2
    inv_n = _inverse_counts(c_n, h_n, w_n, r, y)
    for b in prange(b_n):
        _lcn_forward_one_(x[b], r, inv_n, y[b], d[b])


@njit(cache=True, nogil=True)
def _lcn_forward_one_(x, r, inv_n, y, d):
    """One example: x, y (C, H, W), d (H, W); inv_n (H, W) = 1 / N."""
    c_n, h_n, w_n = x.shape
    eps = y.dtype.type(LCN_EPS)
    plane = np.zeros((h_n, w_n), dtype=y.dtype)
    box = np.empty((h_n, w_n), dtype=y.dtype)
    tmp = np.empty((h_n, w_n), dtype=y.dtype)
    for c in range(c_n):
        plane += x[c]
    _box_sum_(plane, r, tmp, box)
    plane[:] = 0
    for c in range(c_n):
        for h in range(h_n):
            for w in range(w_n):
                v = x[c, h, w] - box[h, w] * inv_n[h, w]
                y[c, h, w] = v
                plane[h, w] += v * v
    _box_sum_(plane, r, tmp, box)
    for h in range(h_n):
        for w in range(w_n):
            d[h, w] = np.sqrt(eps + box[h, w] * inv_n[h, w])
    for c in range(c_n):
        for h in range(h_n):
            for w in range(w_n):
                y[c, h, w] /= d[h, w]


@njit(cache=True, nogil=True, parallel=True)
def lcn_backward_(y, d, dy, size, dx):
    """dx (B, C, H, W) <- d loss / d x from dy, the forward output y and divisor d (B, H, W)."""
    b_n, c_n, h_n, w_n = y.shape
    r = size // 2
    inv_n = _inverse_counts(c_n, h_n, w_n, r, y)
    for b in prange(b_n):
        _lcn_backward_one_(y[b], d[b], dy[b], r, inv_n, dx[b])


@njit(cache=True, nogil=True)
def _lcn_backward_one_(y, d, dy, r, inv_n, dx):
    """One example: y, dy, dx (C, H, W), d (H, W); inv_n (H, W) = 1 / N."""
    c_n, h_n, w_n = y.shape
    one = y.dtype.type(1)
    two = one + one
    half = one / two
    plane = np.zeros((h_n, w_n), dtype=y.dtype)
    g_q = np.empty((h_n, w_n), dtype=y.dtype)
    tmp = np.empty((h_n, w_n), dtype=y.dtype)
    # d loss / d s(h, w), pre-scaled by 1 / N for the adjoint box sum
    for c in range(c_n):
        for h in range(h_n):
            for w in range(w_n):
                plane[h, w] += dy[c, h, w] * y[c, h, w]
    for h in range(h_n):
        for w in range(w_n):
            dd = d[h, w]
            plane[h, w] = -plane[h, w] / dd * half / dd * inv_n[h, w]
    _box_sum_(plane, r, tmp, g_q)  # d loss / d q, q = sum_c v^2
    plane[:] = 0
    for c in range(c_n):
        for h in range(h_n):
            for w in range(w_n):
                dd = d[h, w]
                g_v = dy[c, h, w] / dd + two * (y[c, h, w] * dd) * g_q[h, w]
                dx[c, h, w] = g_v
                plane[h, w] -= g_v * inv_n[h, w]  # d loss / d m, over N
    _box_sum_(plane, r, tmp, g_q)
    for c in range(c_n):
        for h in range(h_n):
            for w in range(w_n):
                dx[c, h, w] += g_q[h, w]
