import numpy as np
import pytest

from distbelief_mpi.kernels import reference as ref
from distbelief_mpi.kernels.server_rules import adagrad_apply_, all_finite, sgd_apply_

SIZES = [0, 1, 7, 1001]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-14)])
def test_sgd_apply_matches_reference(n, dtype, tol):
    rng = np.random.default_rng(n)
    p, g = rng.normal(size=n).astype(dtype), rng.normal(size=n).astype(dtype)
    out = np.empty_like(p)
    sgd_apply_(out, p, g, 0.3)
    np.testing.assert_allclose(out, ref.sgd_apply(p, g, 0.3), rtol=tol, atol=tol)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-14)])
def test_adagrad_apply_matches_reference_over_several_pushes(n, dtype, tol):
    rng = np.random.default_rng(n + 1)
    p = rng.normal(size=n).astype(dtype)
    acc = np.full(n, 0.1, dtype)
    p_ref, acc_ref = p.copy(), acc.copy()
    for _ in range(3):
        g = rng.normal(size=n).astype(dtype)
        out = np.empty_like(p)
        adagrad_apply_(out, p, g, acc, 0.05, 1e-8)
        p_ref, acc_ref = ref.adagrad_apply(p_ref, g, acc_ref, 0.05, 1e-8)
        p = out
    np.testing.assert_allclose(p, p_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(acc, acc_ref, rtol=tol, atol=tol)


def test_adagrad_evens_out_per_parameter_steps():
    """Gradients 10x apart move SGD 10x apart; Adagrad moves both by about gamma per step."""
    p, acc, out = np.zeros(2), np.full(2, 0.1), np.empty(2)
    for _ in range(10):
        adagrad_apply_(out, p, np.array([10.0, 1.0]), acc, 1.0, 1e-8)
        p = out.copy()
    assert 0.95 < p[0] / p[1] < 1.1 and p[0] < 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_any_bad_value(bad):
    values = np.ones(9, np.float32)
    assert all_finite(values) and all_finite(values[:0])
    values[7] = bad
    assert not all_finite(values)


def test_all_finite_accepts_the_largest_finite_values():
    assert all_finite(np.full(1001, np.finfo(np.float32).max, np.float32))
    assert all_finite(np.full(7, -np.finfo(np.float64).max))
