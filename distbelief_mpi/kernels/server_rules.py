"""The parameter server's update rules, applied by a shard to one push at a time.

Out of place: the shard publishes parameters in two alternating buffers (see
comm/param_server.py), so each rule reads the current buffer and writes the next one in
the same pass: params_out (n,) <- rule(params_in (n,), grad (n,)).

Adagrad (Duchi et al. 2011, as in the paper's section 4.1), per parameter i:
    acc_i <- acc_i + g_i^2
    p_i   <- p_i - gamma * g_i / (sqrt(acc_i) + eps)
acc starts at `initial_accumulator` (0.1 by default, so the first steps are not
gamma * sign(g) at full size); eps (1e-8) only guards a zero denominator.
"""

import numpy as np
from numba import njit


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
