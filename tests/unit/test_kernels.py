"""Every Numba kernel equals its NumPy twin (kernels/reference.py).

Tolerances: float64 rtol 1e-10 / atol 1e-12 (only summation order differs);
float32 rtol 1e-4 / atol 1e-5 (sums of up to a few hundred products in single precision).
Sizes include batch 0 and 1 and odd spatial sizes; pooling windows overlap (stride < size).
"""

import numpy as np
import pytest

from distbelief_mpi import kernels as K
from distbelief_mpi.kernels import reference as R

TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}
DTYPES = [np.float32, np.float64]
ACTS = ["relu", "sigmoid", "tanh", "none"]


def close(actual, expected, dtype):
    np.testing.assert_allclose(actual, expected, **TOL[dtype])


def rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("rows,cols", [(0, 3), (1, 1), (5, 7)])
def test_bias_activation_and_gradient(dtype, act, rows, cols):
    rng = np.random.default_rng(1)
    z, bias = rand(rng, (rows, cols), dtype, 3), rand(rng, (cols,), dtype)
    expected = R.bias_activation(z, bias, act)
    K.bias_activation_(z, bias, K.ACTIVATION_CODES[act])
    close(z, expected, dtype)
    dz, grad_b = rand(rng, (rows, cols), dtype), np.empty(cols, dtype)
    exp_dz, exp_b = R.activation_grad_bias(dz, z, act)
    K.activation_grad_bias_(dz, z, K.ACTIVATION_CODES[act], grad_b)
    close(dz, exp_dz, dtype)
    close(grad_b, exp_b, dtype)


def test_sigmoid_saturates_without_overflow():
    z = np.array([[-1000.0, 1000.0, 0.0]], dtype=np.float32)
    K.bias_activation_(z, np.zeros(3, np.float32), K.ACTIVATION_CODES["sigmoid"])
    np.testing.assert_array_equal(z, [[0.0, 1.0, 0.5]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 1001])
def test_sgd_update(dtype, n):
    rng = np.random.default_rng(2)
    params, grad = rand(rng, (n,), dtype), rand(rng, (n,), dtype)
    expected = R.sgd_update(params, grad, 0.1)
    K.sgd_update_(params, grad, 0.1)
    close(params, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,classes", [(0, 3), (1, 1), (1, 2), (7, 5)])
def test_softmax_xent(dtype, batch, classes):
    rng = np.random.default_rng(3)
    logits = rand(rng, (batch, classes), dtype, 5)
    labels = rng.integers(0, classes, size=batch)
    d = np.empty_like(logits)
    scale = 1.0 / max(batch, 1)
    loss, n_correct = K.softmax_xent(logits, labels, d, scale)
    exp_loss, exp_correct, exp_d = R.softmax_xent(logits, labels, scale)
    close(loss, exp_loss, dtype)
    assert n_correct == exp_correct
    close(d, exp_d, dtype)


def test_softmax_xent_rejects_bad_label():
    with pytest.raises(ValueError):
        K.softmax_xent(np.zeros((1, 3)), np.array([3]), np.empty((1, 3)), 1.0)


LOCAL_CASES = [  # (batch, channels, h, w, filters, patch, stride)
    (0, 2, 5, 5, 3, 3, 1),
    (1, 1, 3, 3, 1, 3, 1),
    (3, 2, 7, 9, 5, 3, 2),
    (2, 3, 8, 7, 4, 2, 3),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", LOCAL_CASES)
def test_local_forward_backward(dtype, act, case):
    b, c, h, w, f, p, s = case
    rng = np.random.default_rng(4)
    oh, ow = K.local_out_size(h, p, s), K.local_out_size(w, p, s)
    x = rand(rng, (b, c, h, w), dtype)
    weights = rand(rng, (oh * ow, c * p * p, f), dtype, 0.3)
    bias = rand(rng, (oh * ow, f), dtype)
    y = np.empty((b, f, oh, ow), dtype)
    K.local_forward_(x, weights, bias, s, p, K.ACTIVATION_CODES[act], y)
    close(y, R.local_forward(x, weights, bias, s, p, act), dtype)
    dy = rand(rng, y.shape, dtype)
    grad_w, grad_b, dx = np.empty_like(weights), np.empty_like(bias), np.empty_like(x)
    K.local_backward_(x, weights, y, dy.copy(), s, p, K.ACTIVATION_CODES[act], grad_w, grad_b, dx, True)
    exp_w, exp_b, exp_dx = R.local_backward(x, weights, y, dy, s, p, act)
    close(grad_w, exp_w, dtype)
    close(grad_b, exp_b, dtype)
    close(dx, exp_dx, dtype)


POOL_CASES = [(0, 1, 4, 4, 2, 2), (1, 1, 1, 1, 1, 1), (2, 3, 7, 5, 3, 2), (3, 2, 6, 9, 2, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool(dtype, case):
    b, c, h, w, size, stride = case
    rng = np.random.default_rng(5)
    x = rand(rng, (b, c, h, w), dtype)
    shape = (b, c, K.local_out_size(h, size, stride), K.local_out_size(w, size, stride))
    y, argmax = np.empty(shape, dtype), np.empty(shape, np.int64)
    K.maxpool_forward_(x, size, stride, y, argmax)
    close(y, R.maxpool_forward(x, size, stride), dtype)
    dy, dx = rand(rng, shape, dtype), np.empty_like(x)
    K.maxpool_backward_(dy, argmax, dx)
    close(dx, R.maxpool_backward(x, dy, size, stride), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_l2pool(dtype, case):
    b, c, h, w, size, stride = case
    rng = np.random.default_rng(6)
    x = rand(rng, (b, c, h, w), dtype)
    shape = (b, c, K.local_out_size(h, size, stride), K.local_out_size(w, size, stride))
    y = np.empty(shape, dtype)
    K.l2pool_forward_(x, size, stride, y)
    close(y, R.l2pool_forward(x, size, stride), dtype)
    dy, dx = rand(rng, shape, dtype), np.empty_like(x)
    K.l2pool_backward_(x, y, dy, size, stride, dx)
    close(dx, R.l2pool_backward(x, y, dy, size, stride), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [(0, 1, 3, 3, 3), (1, 1, 1, 1, 3), (2, 3, 7, 5, 3), (1, 2, 4, 9, 5)])
def test_lcn(dtype, case):
    b, c, h, w, size = case
    rng = np.random.default_rng(7)
    x = rand(rng, (b, c, h, w), dtype)
    y, d = np.empty_like(x), np.empty((b, h, w), dtype)
    K.lcn_forward_(x, size, y, d)
    exp_y, exp_d = R.lcn_forward(x, size)
    close(y, exp_y, dtype)
    close(d, exp_d, dtype)
    dy, dx = rand(rng, x.shape, dtype), np.empty_like(x)
    K.lcn_backward_(y, d, dy, size, dx)
    close(dx, R.lcn_backward(x, dy, size), dtype)


def test_set_compute_threads():
    import numba
    from threadpoolctl import threadpool_info

    K.set_compute_threads(1)
    assert numba.get_num_threads() == 1
    assert all(info["num_threads"] == 1 for info in threadpool_info() if info["user_api"] == "blas")
    with pytest.raises(ValueError):
        K.set_compute_threads(0)
