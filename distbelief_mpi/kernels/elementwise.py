"""Fused element-wise kernels: bias + activation, activation gradient + bias gradient, SGD.

Activation codes (ints, because Numba specialises poorly on strings): see ACTIVATION_CODES.
Gradients are expressed through the activation's *output* y, so the pre-activation never
has to be kept: relu' = (y > 0), sigmoid' = y (1 - y), tanh' = 1 - y^2, none' = 1.
"""

import numpy as np
from numba import njit

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


@njit(cache=True, nogil=True)
def bias_activation_(z, bias, kind):
    """z (M, N) <- act(z + bias) in place; bias (N,). Used by dense layers, M = batch."""
    m, n = z.shape
    one = z.dtype.type(1)
    for i in range(m):
        for j in range(n):
            z[i, j] = _activate(z[i, j] + bias[j], kind, one)


@njit(cache=True, nogil=True)
def activation_grad_bias_(dz, y, kind, bias_grad):
    """dz (M, N) <- dz * act'(y) in place; bias_grad (N,) <- sum over rows of the result."""
    m, n = dz.shape
    one = dz.dtype.type(1)
    bias_grad[:] = 0
    for i in range(m):
        for j in range(n):
            g = dz[i, j] * _slope_from_output(y[i, j], kind, one)
            dz[i, j] = g
            bias_grad[j] += g


@njit(cache=True, nogil=True)
def sgd_update_(params, grad, lr):
    """params (n,) <- params - lr * grad, in place, in the parameters' dtype."""
    step = params.dtype.type(lr)
    for i in range(params.shape[0]):
        params[i] -= step * grad[i]
