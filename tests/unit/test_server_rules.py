import numba
import numpy as np
import pytest

from distbelief_mpi.kernels import reference as ref
from distbelief_mpi.kernels import server_rules
from distbelief_mpi.kernels.server_rules import adagrad_apply_, adagrad_step, all_finite, sgd_apply_, sgd_step

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


# -- the shard's fused kernels: finite check + rule, out of place ----------------------------
FUSED_SIZES = [0, 1, 7, 1001, server_rules.PARALLEL_MIN + 3 * server_rules.BLOCK + 5]  # the last: threaded


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"{n}-threads")
def threads(request):
    """Numba threads for the test (the threaded kernels run from PARALLEL_MIN elements)."""
    n = min(request.param, numba.config.NUMBA_NUM_THREADS)
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    yield n
    numba.set_num_threads(before)


@pytest.mark.parametrize("n", FUSED_SIZES)
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-14)])
def test_adagrad_step_matches_reference_and_writes_out_of_place(n, dtype, tol, threads):
    rng = np.random.default_rng(n + 2)
    p, acc = rng.normal(size=n).astype(dtype), rng.uniform(0.1, 2.0, n).astype(dtype)
    g = rng.normal(size=n).astype(dtype)
    p_in, acc_in = p.copy(), acc.copy()
    p_out, acc_out = np.empty_like(p), np.empty_like(acc)
    assert adagrad_step(p_out, p, g, acc_out, acc, 0.05, 1e-8) is True
    p_ref, acc_ref = ref.adagrad_apply(p_in, g, acc_in, 0.05, 1e-8)
    np.testing.assert_allclose(p_out, p_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(acc_out, acc_ref, rtol=tol, atol=tol)
    np.testing.assert_array_equal(p, p_in)  # the inputs are never written
    np.testing.assert_array_equal(acc, acc_in)


@pytest.mark.parametrize("n", FUSED_SIZES)
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-14)])
def test_sgd_step_matches_reference(n, dtype, tol, threads):
    rng = np.random.default_rng(n + 3)
    p, g = rng.normal(size=n).astype(dtype), rng.normal(size=n).astype(dtype)
    out = np.empty_like(p)
    assert sgd_step(out, p, g, 0.3) is True
    np.testing.assert_allclose(out, ref.sgd_apply(p, g, 0.3), rtol=tol, atol=tol)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_fused_steps_reject_any_bad_value_leaving_their_inputs_untouched(bad, where, threads):
    n = FUSED_SIZES[-1]
    at = {"first": 0, "middle": n // 2 + 11, "last": n - 1}[where]
    rng = np.random.default_rng(at)
    p, acc, g = rng.normal(size=n).astype(np.float32), np.full(n, 0.1, np.float32), np.ones(n, np.float32)
    g[at] = bad
    p_in, acc_in = p.copy(), acc.copy()
    assert adagrad_step(np.empty_like(p), p, g, np.empty_like(acc), acc, 0.05, 1e-8) is False
    assert sgd_step(np.empty_like(p), p, g, 0.3) is False
    assert sgd_step(np.empty_like(p[:at]), p[:at], g[:at], 0.3) is True  # everything before it is fine
    np.testing.assert_array_equal(p, p_in)
    np.testing.assert_array_equal(acc, acc_in)


def test_fused_steps_accept_the_largest_finite_values(threads):
    big = np.full(FUSED_SIZES[-1], np.finfo(np.float32).max, np.float32)
    out = np.empty_like(big)
    assert sgd_step(out, big, big, 0.0) is True
    assert adagrad_step(out, big, big, np.empty_like(big), np.ones_like(big), 0.0, 1.0) is True


@pytest.mark.parametrize("out_shift", range(8))
@pytest.mark.parametrize("in_shift", [0, 3])
def test_streaming_stores_give_the_plain_loops_bits_at_every_alignment(out_shift, in_shift, threads):
    """Outputs starting at every float32 offset within 32 bytes (heads, lane groups, tails),
    inputs elsewhere: the streaming kernels (taken whenever the outputs are aligned alike) write
    exactly what the plain loops write, and find a bad value in a head, a lane group or a tail."""
    n = server_rules.PARALLEL_MIN + 2 * server_rules.BLOCK + 13

    def at(shift, values):  # values (n,) copied to a float32 array starting `shift` elements past 64 bytes
        out = server_rules.aligned_full(n + 8, 0.0)[shift : shift + n]
        out[:] = values
        return out

    rng = np.random.default_rng(out_shift)
    p, g = at(in_shift, rng.normal(size=n)), at(in_shift, rng.normal(size=n))
    acc = at(in_shift, rng.uniform(0.1, 2.0, n))
    p_out, acc_out = at(out_shift, np.nan), at(out_shift, np.nan)
    assert server_rules._streaming((p_out, acc_out), (p, g, acc))
    assert adagrad_step(p_out, p, g, acc_out, acc, 0.05, 1e-8)
    plain_p, plain_acc = np.empty(n, np.float32), np.empty(n, np.float32)
    assert server_rules._adagrad_serial(plain_p, p, g, plain_acc, acc, 0.05, 1e-8)
    np.testing.assert_array_equal(p_out, plain_p)
    np.testing.assert_array_equal(acc_out, plain_acc)
    assert sgd_step(p_out, p, g, 0.3)
    np.testing.assert_array_equal(p_out, ref.sgd_apply(p, g, 0.3))
    for where in (0, 5, n // 2, n - 1):
        bad = g.copy()
        bad[where] = np.nan
        assert not adagrad_step(p_out, p, bad, acc_out, acc, 0.05, 1e-8)
        assert not sgd_step(p_out, p, bad, 0.3)


def test_outputs_aligned_differently_take_the_plain_loops():
    p = server_rules.aligned_full(100, 1.0)
    assert not server_rules._streaming((p[:99], p[1:]), (p,))
    assert not server_rules._streaming((p,), (p.astype(np.float64),))
