"""The parameter server's update rules, applied by a shard to one push at a time.

Out of place: the shard publishes parameters in two alternating buffers (see
comm/param_server.py), so each rule reads the current buffer and writes the next one in
the same pass: params_out (n,) <- rule(params_in (n,), grad (n,)).

Adagrad (Duchi et al. 2011, as in the paper's section 4.1), per parameter i:
    acc_i <- acc_i + g_i^2
    p_i   <- p_i - gamma * g_i / (sqrt(acc_i) + eps)
acc starts at `initial_accumulator` (0.1 by default, so the first steps are not
gamma * sign(g) at full size); eps (1e-8) only guards a zero denominator.

The shard's kernels are `sgd_step` and `adagrad_step`: the finite check and the rule in one
pass over memory, everything written out of place (Adagrad's accumulator too: acc_out <-
acc_in + g^2), so a push found non-finite has changed nothing the shard keeps: it discards
the outputs. One pass reads params_in, grad (and acc_in) and writes params_out (and acc_out):
3 arrays for SGD, 5 for Adagrad, against 2 for a memory copy; the separate check read grad
once more. With more than one Numba thread (topology.threads_per_rank, set by
kernels/thread_pool.set_compute_threads) large pushes are split into blocks over the threads.
`all_finite`, `sgd_apply_` and `adagrad_apply_` (accumulator in place) are the single steps,
kept for the Sandblaster shard and the cost model.
"""

import numba
import numpy as np
from numba import njit, prange

# Elements per block of the threaded kernels (256 KiB of float32 per array: a block's 5
# arrays fit a core's L2); below PARALLEL_MIN elements a parallel region's start-up (tens of
# microseconds) costs more than splitting saves, so small pushes run serially.
BLOCK = 1 << 16
PARALLEL_MIN = 1 << 18


# x * 0 is 0 for finite x and NaN for NaN or +-Inf, so one summed pass finds any bad value;
# reassociating the sum (but keeping NaN/Inf semantics) lets it vectorise: 22 ms -> a few ms
# over 42M parameters, against a 15 ms memory copy.
@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "nsz"})
def all_finite(values) -> bool:
    """False when any entry is NaN or +-Inf."""
    total = values.dtype.type(0)
    for i in range(values.shape[0]):
        total += values[i] * values.dtype.type(0)
    return total == 0


# error_model="numpy": no Python division-by-zero check, so the loops vectorise (packed
# sqrt and divide): Adagrad over 42M parameters measured 104 ms -> 67 ms (bench/ps_bandwidth.py).
@njit(cache=True, nogil=True, error_model="numpy")
def sgd_apply_(params_out, params_in, grad, lr):
    """params_out <- params_in - lr * grad."""
    step = params_in.dtype.type(lr)
    for i in range(params_in.shape[0]):
        params_out[i] = params_in[i] - step * grad[i]


@njit(cache=True, nogil=True, error_model="numpy")
def adagrad_apply_(params_out, params_in, grad, acc, gamma, eps):
    """acc += grad^2 (in place); params_out <- params_in - gamma * grad / (sqrt(acc) + eps)."""
    g_rate = params_in.dtype.type(gamma)
    e = acc.dtype.type(eps)
    for i in range(params_in.shape[0]):
        g = grad[i]
        a = acc[i] + g * g
        acc[i] = a
        params_out[i] = params_in[i] - g_rate * g / (np.sqrt(a) + e)


# -- fused: finite check + rule, one pass, out of place ----------------------------------------
# The check counts non-finite gradient entries as an integer (not the x * 0 float sum above,
# which vectorises only under fastmath, and fastmath would also reassociate the rule's
# arithmetic away from kernels/reference.py's). Measured on 41.8M float32 (1 thread):
# separate check + Adagrad 44.8 ms, fused 27.8-31.2 ms, a memory copy 13.9 ms.
@njit(cache=True, nogil=True, error_model="numpy")
def _sgd_span(params_out, params_in, grad, step, lo, hi) -> int:
    """params_out[lo:hi] <- params_in - step * grad over [lo, hi); returns the non-finite grads."""
    bad = 0
    for i in range(lo, hi):
        g = grad[i]
        bad += not np.isfinite(g)
        params_out[i] = params_in[i] - step * g
    return bad


@njit(cache=True, nogil=True, error_model="numpy")
def _adagrad_span(params_out, params_in, grad, acc_out, acc_in, g_rate, e, lo, hi) -> int:
    """Adagrad over [lo, hi) from (params_in, acc_in) into (params_out, acc_out); returns the
    non-finite grads."""
    bad = 0
    for i in range(lo, hi):
        g = grad[i]
        bad += not np.isfinite(g)
        a = acc_in[i] + g * g
        acc_out[i] = a
        params_out[i] = params_in[i] - g_rate * g / (np.sqrt(a) + e)
    return bad


@njit(cache=True, nogil=True, error_model="numpy")
def _sgd_serial(params_out, params_in, grad, lr) -> bool:
    return _sgd_span(params_out, params_in, grad, params_in.dtype.type(lr), 0, grad.shape[0]) == 0


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _sgd_parallel(params_out, params_in, grad, lr) -> bool:
    n, step, bad = grad.shape[0], params_in.dtype.type(lr), 0
    for b in prange((n + BLOCK - 1) // BLOCK):
        bad += _sgd_span(params_out, params_in, grad, step, b * BLOCK, min(n, (b + 1) * BLOCK))
    return bad == 0


@njit(cache=True, nogil=True, error_model="numpy")
def _adagrad_serial(params_out, params_in, grad, acc_out, acc_in, gamma, eps) -> bool:
    g_rate, e = params_in.dtype.type(gamma), acc_in.dtype.type(eps)
    return _adagrad_span(params_out, params_in, grad, acc_out, acc_in, g_rate, e, 0, grad.shape[0]) == 0


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _adagrad_parallel(params_out, params_in, grad, acc_out, acc_in, gamma, eps) -> bool:
    n, bad = grad.shape[0], 0
    g_rate, e = params_in.dtype.type(gamma), acc_in.dtype.type(eps)
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
        bad += _adagrad_span(params_out, params_in, grad, acc_out, acc_in, g_rate, e, lo, hi)
    return bad == 0


def _threaded(n: int) -> bool:
    return n >= PARALLEL_MIN and numba.get_num_threads() > 1


def sgd_step(params_out, params_in, grad, lr) -> bool:
    """params_out <- params_in - lr * grad, all (n,); False when grad holds a NaN or +-Inf
    (params_out is then partly written: discard it)."""
    if _threaded(grad.shape[0]):
        return bool(_sgd_parallel(params_out, params_in, grad, lr))
    return bool(_sgd_serial(params_out, params_in, grad, lr))


def adagrad_step(params_out, params_in, grad, acc_out, acc_in, gamma, eps) -> bool:
    """acc_out <- acc_in + grad^2; params_out <- params_in - gamma * grad / (sqrt(acc_out) + eps),
    all (n,); False when grad holds a NaN or +-Inf (both outputs are then partly written: discard
    them; params_in and acc_in are never written)."""
    if _threaded(grad.shape[0]):
        return bool(_adagrad_parallel(params_out, params_in, grad, acc_out, acc_in, gamma, eps))
    return bool(_adagrad_serial(params_out, params_in, grad, acc_out, acc_in, gamma, eps))


def warm_up() -> None:
    """Load (or compile) the float32 kernels a shard uses, serial and threaded."""
    tiny = np.zeros(1, np.float32)
    for sgd in (_sgd_serial, _sgd_parallel):
        sgd(tiny.copy(), tiny, tiny, 0.0)
    for adagrad in (_adagrad_serial, _adagrad_parallel):
        adagrad(tiny.copy(), tiny, tiny, tiny.copy(), np.ones(1, np.float32), 0.0, 1.0)
