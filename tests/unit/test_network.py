"""build_network errors, parameter layout, init determinism, and that a tiny net learns."""

import numpy as np
import pytest

from distbelief_mpi.errors import ConfigError
from distbelief_mpi.kernels import sgd_update_
from distbelief_mpi.model.network import build_network
from distbelief_mpi.model.spec import LayerSpec

SPECS = [
    LayerSpec("local", filters=4, patch=3, stride=1, activation="relu"),
    LayerSpec("maxpool", size=2, stride=2),
    LayerSpec("dense", units=8, activation="tanh"),
]


def test_build_errors_listed_all_at_once():
    specs = [
        LayerSpec("dense", units=4),
        LayerSpec("local", filters=2, patch=3, stride=1),
        LayerSpec("maxpool", size=2),
    ]
    with pytest.raises(ConfigError) as err:
        build_network(specs, (8,), 3)
    assert err.value.source == "model"
    assert len(err.value.problems) == 2
    assert "model.layers[1]" in err.value.problems[0] and "image input" in err.value.problems[0]
    assert "model.layers[2]" in err.value.problems[1]


def test_patch_that_does_not_fit_is_named():
    specs = [LayerSpec("local", filters=2, patch=9, stride=1), LayerSpec("dense", units=3)]
    with pytest.raises(ConfigError) as err:
        build_network(specs, (1, 4, 4), 3)
    assert err.value.problems == ["model.layers[0]: patch 9 does not fit a 4x4 input"]
    with pytest.raises(ConfigError, match="pool size 5"):
        build_network([LayerSpec("maxpool", size=5)], (1, 4, 6), 3)


def test_layout_and_describe():
    net = build_network(SPECS, (2, 9, 9), 5)
    assert [layer.kind for layer in net.layers] == ["local", "maxpool", "dense", "output"]
    assert net.layers[1].out_shape == (4, 3, 3)
    assert net.param_slices[0].start == 0 and net.param_slices[-1].stop == net.n_params
    for before, after in zip(net.param_slices, net.param_slices[1:]):
        assert before.stop == after.start
    assert net.n_params == sum(layer.n_params for layer in net.layers)
    assert len(net.describe()) == 4 and "local" in net.describe()[0]


def test_init_deterministic_in_seed():
    net = build_network(SPECS, (2, 9, 9), 5)
    a, b, c = net.init_params(7), net.init_params(7), net.init_params(8)
    assert a.dtype == np.float32 and a.shape == (net.n_params,)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(a[net.param_slices[0]][-net.layers[0].n_pos * 4 :] == 0)  # local biases


def test_tiny_network_learns_with_sgd():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    net = build_network([LayerSpec("dense", units=16, activation="relu")], (6,), 2)
    params = net.init_params(0)
    grad = np.empty_like(params)
    first, _ = net.loss_and_grad(params, x, y, grad)
    for _ in range(30):
        net.loss_and_grad(params, x, y, grad)
        sgd_update_(params, grad, 0.5)
    last, _ = net.evaluate(params, x, y, batch_size=10)
    assert last < 0.7 * first
    assert net.evaluate(params, x, y)[1] > 0.9


def test_batch_sizes_zero_one_and_odd_and_eval_matches_grad_pass():
    net = build_network(SPECS, (2, 9, 9), 5)
    params, rng = net.init_params(1), np.random.default_rng(2)
    grad = np.empty_like(params)
    for batch in (0, 1, 7, 1):
        x, y = rng.standard_normal((batch, 2, 9, 9)), rng.integers(0, 5, batch)
        loss, n_correct = net.loss_and_grad(params, x, y, grad)
        assert np.isfinite(grad).all()
        if batch:
            assert net.predict_logits(params, x).shape == (batch, 5)
            ev_loss, acc = net.evaluate(params, x, y, batch_size=3)
            assert ev_loss == pytest.approx(loss, rel=1e-5) and acc == n_correct / batch
        else:
            assert loss == 0.0 and not grad.any()


def test_bad_arguments_rejected():
    net = build_network([], (4,), 3)
    params = net.init_params(0)
    with pytest.raises(ValueError):
        net.loss_and_grad(params, np.zeros((2, 5)), np.zeros(2, int), np.empty_like(params))
    with pytest.raises(ValueError):
        net.loss_and_grad(params.astype(np.float64), np.zeros((2, 4)), np.zeros(2, int), params)


def test_specs_built_in_code_are_checked_too():
    specs = [LayerSpec("local", filters=2, patch=3), LayerSpec("dense", units=0)]  # stride 0
    with pytest.raises(ConfigError) as err:
        build_network(specs, (1, 6, 6), 3)
    assert any("layers[0].stride" in p for p in err.value.problems)
