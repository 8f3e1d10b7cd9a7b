"""Fused element-wise kernels: bias + activation, activation gradient + bias gradient, SGD.

Activation codes (ints, because Numba specialises poorly on strings): see ACTIVATION_CODES.
Gradients are expressed through the activation's *output* y, so the pre-activation never
has to be kept: relu' = (y > 0), sigmoid' = y (1 - y), tanh' = 1 - y^2, none' = 1.

Threads: Numba `prange` over blocks of rows (bias + activation), of columns (activation gradient:
each thread sums the bias gradient of its own columns over every row, in row order) or of the
vector (SGD). Below PARALLEL_MIN elements a kernel stays on the calling thread: waking the pool
costs more than the work (see bench/README.md). Results are bitwise the same on any thread count.
"""

import numpy as np
from numba import njit, prange

# Fewer elements than this run serially. A parallel region costs some microseconds to start
# (more when the pool's threads have gone to sleep); 16K activations take about 30-100 us.
PARALLEL_MIN = 1 << 14
COLUMN_BLOCK = 64  # activation_grad_bias_ columns per task: 256 bytes of float32 per row
SGD_BLOCK = 1 << 16  # sgd_update_ elements per task

RELU, SIGMOID, TANH, NONE = 0, 1, 2, 3
ACTIVATION_CODES = {"relu": RELU, "sigmoid": SIGMOID, "tanh": TANH, "none": NONE}


@njit(cache=True, inline="always")
def _activate(z, kind, one):
    # `one` carries the array dtype so float32 math stays float32 (a bare 1 would promote)
    zero = one - one
    if kind == RELU:
        return z if z > zero else zero
    if kind == SIGMOID:
        # split on the sign so exp never overflows
        if z >= zero:
            return one / (one + np.exp(-z))
        e = np.exp(z)
        return e / (one + e)
    if kind == TANH:
        return np.tanh(z)
    return z


@njit(cache=True, inline="always")
def _slope_from_output(y, kind, one):
    zero = one - one
    if kind == RELU:
        return one if y > zero else zero
    if kind == SIGMOID:
        return y * (one - y)
    if kind == TANH:
        return one - y * y
    return one


@njit(cache=True, nogil=True, parallel=True)
def bias_activation_(z, bias, kind):
    """z (M, N) <- act(z + bias) in place; bias (N,). Used by dense layers, M = batch."""
    m, n = z.shape
    if m * n < PARALLEL_MIN:
        _bias_activation_rows_(z, bias, kind, 0, m)
        return
    for i in prange(m):
        _bias_activation_rows_(z, bias, kind, i, i + 1)


@njit(cache=True, nogil=True)
def _bias_activation_rows_(z, bias, kind, lo, hi):
    one = z.dtype.type(1)
    for i in range(lo, hi):
        for j in range(z.shape[1]):
            z[i, j] = _activate(z[i, j] + bias[j], kind, one)


@njit(cache=True, nogil=True, parallel=True)
def activation_grad_bias_(dz, y, kind, bias_grad):
    """dz (M, N) <- dz * act'(y) in place; bias_grad (N,) <- sum over rows of the result."""
    m, n = dz.shape
    if m * n < PARALLEL_MIN:
        _activation_grad_columns_(dz, y, kind, bias_grad, 0, n)
        return
    for block in prange((n + COLUMN_BLOCK - 1) // COLUMN_BLOCK):
        lo = block * COLUMN_BLOCK
        _activation_grad_columns_(dz, y, kind, bias_grad, lo, min(n, lo + COLUMN_BLOCK))


@njit(cache=True, nogil=True)
def _activation_grad_columns_(dz, y, kind, bias_grad, lo, hi):
    """Columns [lo, hi): dz <- dz * act'(y); bias_grad[lo:hi] <- column sums, rows in order."""
    one = dz.dtype.type(1)
    for j in range(lo, hi):
        bias_grad[j] = 0
    for i in range(dz.shape[0]):
        for j in range(lo, hi):
            g = dz[i, j] * _slope_from_output(y[i, j], kind, one)
            dz[i, j] = g
            bias_grad[j] += g


@njit(cache=True, nogil=True, parallel=True)
def sgd_update_(params, grad, lr):
    """params (n,) <- params - lr * grad, in place, in the parameters' dtype."""
    n = params.shape[0]
    step = params.dtype.type(lr)
    if n < PARALLEL_MIN:
        _sgd_range_(params, grad, step, 0, n)
        return
    for block in prange((n + SGD_BLOCK - 1) // SGD_BLOCK):
        lo = block * SGD_BLOCK
        _sgd_range_(params, grad, step, lo, min(n, lo + SGD_BLOCK))


@njit(cache=True, nogil=True)
def _sgd_range_(params, grad, step, lo, hi):
    for i in range(lo, hi):
        params[i] -= step * grad[i]
