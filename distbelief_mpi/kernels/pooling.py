"""Max and L2 pooling per channel, valid windows (size x size, stride), forward + backward.

x (B, C, H, W) -> y (B, C, OH, OW), OH = (H - size) // stride + 1. Windows may overlap
(stride < size); backward then accumulates. L2 pooling: y = sqrt(sum_window x^2 + L2POOL_EPS),
the eps keeps the gradient x / y finite at an all-zero window.

Threads: Numba `prange` over the B * C planes. A plane's output, and its dx in the backward
pass, depend on that plane alone, so overlapping windows never race, and every result is
bitwise the same on any thread count.
"""

import numpy as np
from numba import njit, prange

L2POOL_EPS = 1e-6


@njit(cache=True, nogil=True, parallel=True)
def maxpool_forward_(x, size, stride, y, argmax):
    """y (B, C, OH, OW) <- window max; argmax (B, C, OH, OW) int <- h * W + w of the max (first)."""
    b_n, c_n, _, w_n = x.shape
    oh_n, ow_n = y.shape[2], y.shape[3]
    for bc in prange(b_n * c_n):
        b, c = bc // c_n, bc % c_n
        for oh in range(oh_n):
            for ow in range(ow_n):
                h0, w0 = oh * stride, ow * stride
                best = x[b, c, h0, w0]
                where = h0 * w_n + w0
                for i in range(size):
                    for j in range(size):
                        v = x[b, c, h0 + i, w0 + j]
                        if v > best:
                            best = v
                            where = (h0 + i) * w_n + w0 + j
                y[b, c, oh, ow] = best
                argmax[b, c, oh, ow] = where


@njit(cache=True, nogil=True, parallel=True)
def maxpool_backward_(dy, argmax, dx):
    """dx (B, C, H, W) <- sum of dy routed to each window's max (overwritten)."""
    b_n, c_n, oh_n, ow_n = dy.shape
    h_n, w_n = dx.shape[2], dx.shape[3]
    for bc in prange(b_n * c_n):
        b, c = bc // c_n, bc % c_n
        for h in range(h_n):
            for w in range(w_n):
                dx[b, c, h, w] = 0
        for oh in range(oh_n):
            for ow in range(ow_n):
                where = argmax[b, c, oh, ow]
                dx[b, c, where // w_n, where % w_n] += dy[b, c, oh, ow]


@njit(cache=True, nogil=True, parallel=True)
def l2pool_forward_(x, size, stride, y):
    """y (B, C, OH, OW) <- sqrt(sum over the window of x^2 + L2POOL_EPS)."""
    b_n, c_n = x.shape[0], x.shape[1]
    oh_n, ow_n = y.shape[2], y.shape[3]
    eps = y.dtype.type(L2POOL_EPS)
    for bc in prange(b_n * c_n):
        b, c = bc // c_n, bc % c_n
        for oh in range(oh_n):
            for ow in range(ow_n):
                h0, w0 = oh * stride, ow * stride
                total = eps
                for i in range(size):
                    for j in range(size):
                        v = x[b, c, h0 + i, w0 + j]
                        total += v * v
                y[b, c, oh, ow] = np.sqrt(total)


@njit(cache=True, nogil=True, parallel=True)
def l2pool_backward_(x, y, dy, size, stride, dx):
    """dx (B, C, H, W) <- sum over windows containing the pixel of dy * x / y (overwritten)."""
    b_n, c_n, h_n, w_n = x.shape
    oh_n, ow_n = y.shape[2], y.shape[3]
    for bc in prange(b_n * c_n):
        b, c = bc // c_n, bc % c_n
        for h in range(h_n):
            for w in range(w_n):
                dx[b, c, h, w] = 0
        for oh in range(oh_n):
            for ow in range(ow_n):
                h0, w0 = oh * stride, ow * stride
                g = dy[b, c, oh, ow] / y[b, c, oh, ow]
                for i in range(size):
                    for j in range(size):
                        dx[b, c, h0 + i, w0 + j] += g * x[b, c, h0 + i, w0 + j]
