"""Threaded kernels: the same results on 1, 2 and 3 threads, and no more threads than asked for.

Every kernel splits its work by geometry (planes, rows, examples, blocks of a fixed size), never by
the thread count, and sums in a fixed order, so a result must be bitwise the one of 1 thread; each is
also checked against its NumPy twin (kernels/reference.py) at float32 tolerance. Shapes are big
enough to take the parallel paths (elementwise.PARALLEL_MIN) and to give the locally connected
layer's dx several chunks of each colour.

Numba's pool is sized when Numba starts (NUMBA_NUM_THREADS, the CPU count by default), so the
results are computed in a child process started with NUMBA_NUM_THREADS=3 (this file run as a script).
"""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from distbelief_mpi import kernels as K
from distbelief_mpi.kernels import reference as R
from distbelief_mpi.kernels import thread_pool

THREADS = (1, 2, 3)
TOL = dict(rtol=1e-4, atol=1e-5)
DT = np.float32
# (batch, channels, h, w, filters, patch, stride): dx chunks of 4 rows (patch 5 / stride 1, 9 output
# rows: 3 chunks), of 1 row with overlap (3 / 2), no overlap (2 / 2), a batch of one
LOCAL_CASES = [(5, 2, 13, 11, 3, 5, 1), (4, 3, 15, 12, 4, 3, 2), (3, 1, 10, 10, 2, 2, 2), (1, 2, 9, 9, 3, 4, 1)]
POOL = (4, 3, 9, 8, 3, 2)  # batch, channels, h, w, size, stride (overlapping windows)
LCN = (5, 3, 9, 7, 5)  # batch, channels, h, w, size
DENSE = (130, 257)  # 33,410 elements: the parallel path
SOFTMAX = (300, 70)  # 21,000 logits: the parallel path
SGD_N = 3 * (1 << 16) + 17


def _rand(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(DT)


def _local_inputs(case, seed):
    b, c, h, w, f, p, s = case
    rng = np.random.default_rng(seed)
    oh, ow = K.local_out_size(h, p, s), K.local_out_size(w, p, s)
    x = _rand(rng, (b, c, h, w))
    weights = _rand(rng, (oh * ow, c * p * p, f), 0.3)
    bias = _rand(rng, (oh * ow, f))
    dy = _rand(rng, (b, f, oh, ow))
    return x, weights, bias, dy


def _local(case, seed, act):
    """{name: array} of the Numba kernels on one locally connected case."""
    x, weights, bias, dy = _local_inputs(case, seed)
    p, s, code = case[5], case[6], K.ACTIVATION_CODES[act]
    y = np.empty_like(dy)
    K.local_forward_(x, weights, bias, s, p, code, y)
    grad_w, grad_b, dx = np.empty_like(weights), np.empty_like(bias), np.empty_like(x)
    K.local_backward_(x, weights, y, dy.copy(), s, p, code, grad_w, grad_b, dx, True)
    grad_w2, grad_b2 = np.empty_like(weights), np.empty_like(bias)
    K.local_backward_(x, weights, y, dy.copy(), s, p, code, grad_w2, grad_b2, np.empty((0, 0, 0, 0), DT), False)
    return {"y": y, "grad_w": grad_w, "grad_b": grad_b, "dx": dx, "grad_w_no_dx": grad_w2, "grad_b_no_dx": grad_b2}


def _local_reference(case, seed, act):
    x, weights, bias, dy = _local_inputs(case, seed)
    p, s = case[5], case[6]
    y = R.local_forward(x, weights, bias, s, p, act)
    gw, gb, dx = R.local_backward(x, weights, y, dy, s, p, act)
    return {"y": y, "grad_w": gw, "grad_b": gb, "dx": dx, "grad_w_no_dx": gw, "grad_b_no_dx": gb}


def _image_inputs(seed):
    rng = np.random.default_rng(seed)
    b, c, h, w, size, stride = POOL
    x = _rand(rng, (b, c, h, w))
    pooled = (b, c, K.local_out_size(h, size, stride), K.local_out_size(w, size, stride))
    lb, lc, lh, lw, _ = LCN
    return x, _rand(rng, pooled), _rand(rng, (lb, lc, lh, lw)), _rand(rng, (lb, lc, lh, lw))


def _image():
    x, dy, lx, ldy = _image_inputs(10)
    size, stride, lsize = POOL[4], POOL[5], LCN[4]
    out = {}
    y, argmax = np.empty_like(dy), np.empty(dy.shape, np.int64)
    K.maxpool_forward_(x, size, stride, y, argmax)
    out["maxpool_y"], out["maxpool_dx"] = y, np.empty_like(x)
    K.maxpool_backward_(dy, argmax, out["maxpool_dx"])
    out["l2pool_y"], out["l2pool_dx"] = np.empty_like(dy), np.empty_like(x)
    K.l2pool_forward_(x, size, stride, out["l2pool_y"])
    K.l2pool_backward_(x, out["l2pool_y"], dy, size, stride, out["l2pool_dx"])
    out["lcn_y"], out["lcn_d"], out["lcn_dx"] = (
        np.empty_like(lx),
        np.empty((LCN[0], LCN[2], LCN[3]), DT),
        np.empty_like(lx),
    )
    K.lcn_forward_(lx, lsize, out["lcn_y"], out["lcn_d"])
    K.lcn_backward_(out["lcn_y"], out["lcn_d"], ldy, lsize, out["lcn_dx"])
    return out


def _image_reference():
    x, dy, lx, ldy = _image_inputs(10)
    size, stride, lsize = POOL[4], POOL[5], LCN[4]
    l2_y = R.l2pool_forward(x, size, stride)
    lcn_y, lcn_d = R.lcn_forward(lx, lsize)
    return {
        "maxpool_y": R.maxpool_forward(x, size, stride),
        "maxpool_dx": R.maxpool_backward(x, dy, size, stride),
        "l2pool_y": l2_y,
        "l2pool_dx": R.l2pool_backward(x, l2_y, dy, size, stride),
        "lcn_y": lcn_y,
        "lcn_d": lcn_d,
        "lcn_dx": R.lcn_backward(lx, ldy, lsize),
    }


def _flat_inputs(seed):
    rng = np.random.default_rng(seed)
    z, bias, dz = _rand(rng, DENSE, 3), _rand(rng, DENSE[1:]), _rand(rng, DENSE)
    logits, labels = _rand(rng, SOFTMAX, 5), rng.integers(0, SOFTMAX[1], SOFTMAX[0])
    params, grad = _rand(rng, (SGD_N,)), _rand(rng, (SGD_N,))
    return z, bias, dz, logits, labels, params, grad


def _flat():
    z, bias, dz, logits, labels, params, grad = _flat_inputs(11)
    out = {}
    for act in ("sigmoid", "relu"):
        y = z.copy()
        K.bias_activation_(y, bias, K.ACTIVATION_CODES[act])
        d, grad_b = dz.copy(), np.empty_like(bias)
        K.activation_grad_bias_(d, y, K.ACTIVATION_CODES[act], grad_b)
        out[f"{act}_y"], out[f"{act}_dz"], out[f"{act}_grad_b"] = y, d, grad_b
    dlogits = np.empty_like(logits)
    loss, n_correct = K.softmax_xent(logits, labels, dlogits, 1.0 / len(logits))
    out["softmax_loss"], out["softmax_correct"], out["softmax_d"] = np.float64(loss), np.int64(n_correct), dlogits
    K.sgd_update_(params, grad, 0.1)
    out["sgd"] = params
    return out


def _flat_reference():
    z, bias, dz, logits, labels, params, grad = _flat_inputs(11)
    out = {}
    for act in ("sigmoid", "relu"):
        y = R.bias_activation(z, bias, act)
        out[f"{act}_y"] = y
        out[f"{act}_dz"], out[f"{act}_grad_b"] = R.activation_grad_bias(dz, y, act)
    loss, n_correct, d = R.softmax_xent(logits, labels, 1.0 / len(logits))
    out["softmax_loss"], out["softmax_correct"], out["softmax_d"] = loss, n_correct, d
    out["sgd"] = R.sgd_update(params, grad, 0.1)
    return out


def all_outputs() -> dict:
    out = {f"flat/{k}": v for k, v in _flat().items()}
    out.update({f"image/{k}": v for k, v in _image().items()})
    for i, case in enumerate(LOCAL_CASES):
        act = ("sigmoid", "relu", "tanh", "none")[i]
        out.update({f"local{i}/{k}": v for k, v in _local(case, 20 + i, act).items()})
    return out


def all_references() -> dict:
    out = {f"flat/{k}": v for k, v in _flat_reference().items()}
    out.update({f"image/{k}": v for k, v in _image_reference().items()})
    for i, case in enumerate(LOCAL_CASES):
        act = ("sigmoid", "relu", "tanh", "none")[i]
        out.update({f"local{i}/{k}": v for k, v in _local_reference(case, 20 + i, act).items()})
    return out


def _child(path: str) -> None:
    """Script mode: every output at 1, 2 and 3 threads, and the thread counts seen, into an .npz."""
    import numba

    saved = {}
    for n in THREADS:
        K.set_compute_threads(n)
        saved[f"{n}:numba_threads"] = np.int64(numba.get_num_threads())
        saved.update({f"{n}:{k}": v for k, v in all_outputs().items()})
    saved["layer"] = np.array(thread_pool.threading_layer())
    np.savez(path, **saved)


@pytest.fixture(scope="module")
def by_threads(tmp_path_factory):
    path = tmp_path_factory.mktemp("threads") / "out.npz"
    env = dict(os.environ, NUMBA_NUM_THREADS=str(max(THREADS)))
    subprocess.run([sys.executable, __file__, str(path)], env=env, check=True, timeout=600)
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("threads", THREADS)
def test_every_kernel_equals_its_reference(by_threads, threads):
    assert by_threads[f"{threads}:numba_threads"] == threads
    for name, expected in all_references().items():
        actual = by_threads[f"{threads}:{name}"]
        np.testing.assert_allclose(actual, expected, **TOL, err_msg=f"{name} on {threads} threads")


@pytest.mark.parametrize("threads", THREADS[1:])
def test_every_kernel_is_bitwise_the_one_thread_result(by_threads, threads):
    for name in all_references():
        np.testing.assert_array_equal(by_threads[f"{threads}:{name}"], by_threads[f"1:{name}"], err_msg=name)


def test_threading_layer_allows_calls_from_several_python_threads(by_threads):
    # workqueue aborts the process when two Python threads enter it at once (partition tests do)
    assert str(by_threads["layer"]) in ("omp", "tbb")


def test_the_package_sets_openblas_idle_timeout_before_numpy_loads():
    # OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when NumPy loads it: `import distbelief_mpi` must
    # set it and import nothing that loads NumPy (the `distbelief` command imports it first)
    code = "import os, sys, distbelief_mpi; print('numpy' in sys.modules, os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "4"]


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


def test_blas_runs_on_one_thread_inside_the_pin_and_on_n_after():
    K.set_compute_threads(2)
    try:
        with thread_pool.blas_single_threaded():
            assert set(_blas_threads()) == {1}
            with thread_pool.blas_single_threaded():
                assert set(_blas_threads()) == {1}
            assert set(_blas_threads()) == {1}  # an inner exit does not lift the outer pin
        assert set(_blas_threads()) == {2}
    finally:
        K.set_compute_threads(1)


def test_overlapping_pins_from_python_threads_restore_n():
    # A enters, B enters, A leaves, B leaves: a save/restore pair per caller would end at 1
    K.set_compute_threads(2)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen_by_b: list[set[int]] = []

    def a():
        with thread_pool.blas_single_threaded():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with thread_pool.blas_single_threaded():
            b_in.set()
            a_out.wait(10)
            seen_by_b.append(set(_blas_threads()))  # still pinned: B is inside

    try:
        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert seen_by_b == [{1}]
        assert set(_blas_threads()) == {2}
    finally:
        K.set_compute_threads(1)


def test_local_kernels_restore_blas_threads():
    K.set_compute_threads(2)
    try:
        _local(LOCAL_CASES[0], 1, "relu")
        assert set(_blas_threads()) == {2}
    finally:
        K.set_compute_threads(1)


if __name__ == "__main__":
    _child(sys.argv[1])
