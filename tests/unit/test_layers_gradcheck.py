"""Float64 central finite-difference checks of every layer's backward and of the whole network.

Each layer is checked through the scalar L = sum(forward(x) * r) for a fixed random r, so
dL/dy = r. Step 1e-6; analytic and numeric gradients must agree to rtol 1e-5 / atol 1e-7.
Inputs are random normals, so ReLU kinks and max-pool ties are (almost surely) not hit.
"""

import numpy as np
import pytest

from distbelief_mpi.model.image_layers import LCN, L2Pool2D, LocallyConnected2D, MaxPool2D
from distbelief_mpi.model.layers import Dense, SoftmaxOutput
from distbelief_mpi.model.network import build_network
from distbelief_mpi.model.spec import LayerSpec

STEP, RTOL, ATOL = 1e-6, 1e-5, 1e-7
F64 = np.float64


def numeric_grad(f, v):
    """Central differences of the scalar f() with respect to every entry of v (in place)."""
    out = np.empty_like(v)
    flat, grad = v.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + STEP
        up = f()
        flat[i] = keep - STEP
        down = f()
        flat[i] = keep
        grad[i] = (up - down) / (2 * STEP)
    return out


def check_layer(layer, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    params = np.zeros(layer.n_params, F64)
    layer.init(params, seed)
    params += rng.standard_normal(params.shape) * 0.1  # nonzero biases too
    x = rng.standard_normal((batch,) + layer.in_shape)
    r = rng.standard_normal((batch,) + layer.out_shape)

    def loss():
        return float((layer.forward(params, x)[0] * r).sum())

    y, cache = layer.forward(params, x)
    grad = np.full(layer.n_params, np.nan)
    dx = layer.backward(params, cache, r.copy(), grad, need_dx=True).copy()
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=RTOL, atol=ATOL)
    if layer.n_params:
        np.testing.assert_allclose(grad, numeric_grad(loss, params), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh", "none"])
def test_dense(act):
    check_layer(Dense((2, 3, 2), 4, act, F64))


def test_softmax_output_layer():
    check_layer(SoftmaxOutput((5,), 3, F64))


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("stride", [1, 2])
def test_local(act, stride):
    check_layer(LocallyConnected2D((2, 7, 6), 3, 3, stride, act, F64))


@pytest.mark.parametrize("cls", [MaxPool2D, L2Pool2D])
@pytest.mark.parametrize("size,stride", [(3, 2), (2, 1), (2, 2)])
def test_pooling(cls, size, stride):
    check_layer(cls((2, 7, 6), size, stride, F64))


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lcn(size):
    check_layer(LCN((3, 6, 5), size, F64))


def test_whole_network_with_softmax_cross_entropy():
    specs = [
        LayerSpec("lcn", size=3),
        LayerSpec("local", filters=3, patch=3, stride=2, activation="tanh"),
        LayerSpec("l2pool", size=2, stride=1),
        LayerSpec("maxpool", size=2, stride=1),
        LayerSpec("dense", units=4, activation="sigmoid"),
    ]
    net = build_network(specs, (2, 9, 8), 3, dtype=F64)
    rng = np.random.default_rng(1)
    params = net.init_params(3)
    x, y = rng.standard_normal((3, 2, 9, 8)), np.array([0, 2, 1])
    grad = np.empty_like(params)
    net.loss_and_grad(params, x, y, grad)
    numeric = numeric_grad(lambda: net.loss_and_grad(params, x, y, np.empty_like(params))[0], params)
    np.testing.assert_allclose(grad, numeric, rtol=RTOL, atol=ATOL)
