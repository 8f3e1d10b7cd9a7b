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

Streaming stores: a plain store to a line not in cache first reads it (a read for ownership),
so an out-of-place update moves 7 arrays' bytes, not 5. For float32 outputs aligned alike, the
kernels write 8 elements at a time with non-temporal stores (LLVM `!nontemporal`, which the
loop vectoriser will not emit itself), bit-identical to the plain loop: measured on 41.8M
parameters under load, Adagrad 83-92 ms plain against 60-68 ms streaming (memcpy 42 ms).
"""

from typing import Any

import numba
import numpy as np
from llvmlite import ir  # type: ignore[import-untyped]
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

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


# -- streaming stores (float32): 8 elements per call, outputs 32-byte aligned ------------------
LANES = 8  # float32 in 32 bytes (one AVX register)


def _lanes(builder, context, array_type, array, i):
    """<8 x float>* to elements [i, i + 8) of a float32 array."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [i]), ir.VectorType(ir.FloatType(), LANES).as_pointer())


def _splat(builder, x):
    vec = ir.VectorType(ir.FloatType(), LANES)
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(
        one, ir.Constant(vec, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
    )


def _vector_fn(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _stream(builder, value, pointer):
    """A non-temporal store of 8 float32 to a 32-byte aligned address."""
    store = builder.store(value, pointer, align=32)
    store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))


def _count_bad(builder, g):
    """How many of the 8 float32 in g are NaN or +-Inf (|g| unordered-or-equal to Inf)."""
    vec = ir.VectorType(ir.FloatType(), LANES)
    magnitude = builder.call(_vector_fn(builder, "llvm.fabs.v8f32", vec, [vec]), [g])
    bad = builder.fcmp_unordered("==", magnitude, ir.Constant(vec, [float("inf")] * LANES))
    bits = builder.bitcast(bad, ir.IntType(LANES))
    count = builder.call(_vector_fn(builder, "llvm.ctpop.i8", ir.IntType(LANES), [ir.IntType(LANES)]), [bits])
    return builder.zext(count, ir.IntType(64))


def _adagrad_lanes_typer(typingctx, params_out, params_in, grad, acc_out, acc_in, i, g_rate, e):
    """Adagrad on elements [i, i + 8), the same float32 operations in the same order as
    _adagrad_span, streaming both outputs; returns the non-finite grads among them."""

    def codegen(context, builder, signature, args):
        tys, (p_out, p_in, g_, a_out, a_in, i_, rate, eps) = signature.args, args
        vec = ir.VectorType(ir.FloatType(), LANES)
        g = builder.load(_lanes(builder, context, tys[2], g_, i_), align=4)
        a = builder.fadd(builder.load(_lanes(builder, context, tys[4], a_in, i_), align=4), builder.fmul(g, g))
        root = builder.call(_vector_fn(builder, "llvm.sqrt.v8f32", vec, [vec]), [a])
        step = builder.fdiv(builder.fmul(_splat(builder, rate), g), builder.fadd(root, _splat(builder, eps)))
        p = builder.fsub(builder.load(_lanes(builder, context, tys[1], p_in, i_), align=4), step)
        _stream(builder, a, _lanes(builder, context, tys[3], a_out, i_))
        _stream(builder, p, _lanes(builder, context, tys[0], p_out, i_))
        return _count_bad(builder, g)

    return types.int64(params_out, params_in, grad, acc_out, acc_in, i, g_rate, e), codegen


# Any: mypy would check calls against the typer's signature (typingctx first), not the kernel's.
_adagrad_lanes: Any = intrinsic(_adagrad_lanes_typer)


def _sgd_lanes_typer(typingctx, params_out, params_in, grad, i, step):
    """SGD on elements [i, i + 8), as _sgd_span, streaming the output; returns the non-finite grads."""

    def codegen(context, builder, signature, args):
        tys, (p_out, p_in, g_, i_, step_) = signature.args, args
        g = builder.load(_lanes(builder, context, tys[2], g_, i_), align=4)
        p = builder.fsub(
            builder.load(_lanes(builder, context, tys[1], p_in, i_), align=4), builder.fmul(_splat(builder, step_), g)
        )
        _stream(builder, p, _lanes(builder, context, tys[0], p_out, i_))
        return _count_bad(builder, g)

    return types.int64(params_out, params_in, grad, i, step), codegen


_sgd_lanes: Any = intrinsic(_sgd_lanes_typer)


def _store_fence_typer(typingctx):
    """Order the streaming stores before anything after (they bypass the usual ordering)."""

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


_store_fence: Any = intrinsic(_store_fence_typer)


@njit(cache=True, nogil=True, error_model="numpy")
def _aligned_body(params_out, lo, hi):
    """[start, stop) within [lo, hi): the elements of 32-byte aligned lane groups of params_out."""
    skip = ((32 - (params_out.ctypes.data + 4 * lo) % 32) % 32) // 4
    start = min(hi, lo + skip)
    return start, start + (hi - start) // LANES * LANES


@njit(cache=True, nogil=True, error_model="numpy")
def _adagrad_span_streaming(params_out, params_in, grad, acc_out, acc_in, g_rate, e, lo, hi) -> int:
    """_adagrad_span with streaming stores (float32; params_out and acc_out aligned alike)."""
    start, stop = _aligned_body(params_out, lo, hi)
    bad = _adagrad_span(params_out, params_in, grad, acc_out, acc_in, g_rate, e, lo, start)
    for i in range(start, stop, LANES):
        bad += _adagrad_lanes(params_out, params_in, grad, acc_out, acc_in, i, g_rate, e)
    bad += _adagrad_span(params_out, params_in, grad, acc_out, acc_in, g_rate, e, stop, hi)
    _store_fence()
    return bad


@njit(cache=True, nogil=True, error_model="numpy")
def _sgd_span_streaming(params_out, params_in, grad, step, lo, hi) -> int:
    start, stop = _aligned_body(params_out, lo, hi)
    bad = _sgd_span(params_out, params_in, grad, step, lo, start)
    for i in range(start, stop, LANES):
        bad += _sgd_lanes(params_out, params_in, grad, i, step)
    bad += _sgd_span(params_out, params_in, grad, step, stop, hi)
    _store_fence()
    return bad


@njit(cache=True, nogil=True, error_model="numpy")
def _sgd_streaming_serial(params_out, params_in, grad, lr) -> bool:
    return _sgd_span_streaming(params_out, params_in, grad, np.float32(lr), 0, grad.shape[0]) == 0


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _sgd_streaming_parallel(params_out, params_in, grad, lr) -> bool:
    n, step, bad = grad.shape[0], np.float32(lr), 0
    for b in prange((n + BLOCK - 1) // BLOCK):
        bad += _sgd_span_streaming(params_out, params_in, grad, step, b * BLOCK, min(n, (b + 1) * BLOCK))
    return bad == 0


@njit(cache=True, nogil=True, error_model="numpy")
def _adagrad_streaming_serial(params_out, params_in, grad, acc_out, acc_in, gamma, eps) -> bool:
    g_rate, e = np.float32(gamma), np.float32(eps)
    return _adagrad_span_streaming(params_out, params_in, grad, acc_out, acc_in, g_rate, e, 0, grad.shape[0]) == 0


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _adagrad_streaming_parallel(params_out, params_in, grad, acc_out, acc_in, gamma, eps) -> bool:
    n, bad = grad.shape[0], 0
    g_rate, e = np.float32(gamma), np.float32(eps)
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
        bad += _adagrad_span_streaming(params_out, params_in, grad, acc_out, acc_in, g_rate, e, lo, hi)
    return bad == 0


# -- what the shard calls -----------------------------------------------------------------------
def aligned_full(n: int, value: float, like: np.ndarray | None = None) -> np.ndarray:
    """(n,) float32 filled with value, starting at the same address modulo 64 bytes as `like`
    (default: on a 64-byte line; NumPy aligns to 16 only), so that the two stream together."""
    buffer = np.empty(n + 16, np.float32)
    phase = like.ctypes.data % 64 if like is not None else 0
    skip = ((phase - buffer.ctypes.data) % 64) // 4
    out = buffer[skip : skip + n]
    out[:] = value
    return out


def _threaded(n: int) -> bool:
    return n >= PARALLEL_MIN and numba.get_num_threads() > 1


def _streaming(outputs, inputs) -> bool:
    """Streaming stores apply: float32 contiguous arrays, the outputs at the same offset modulo
    32 bytes (their aligned groups of 8 then coincide; inputs may lie anywhere)."""
    if not all(a.dtype == np.float32 and a.flags.c_contiguous for a in (*outputs, *inputs)):
        return False
    return len({a.ctypes.data % 32 for a in outputs}) == 1


def sgd_step(params_out, params_in, grad, lr) -> bool:
    """params_out <- params_in - lr * grad, all (n,); False when grad holds a NaN or +-Inf
    (params_out is then partly written: discard it)."""
    threaded, streaming = _threaded(grad.shape[0]), _streaming((params_out,), (params_in, grad))
    if streaming:
        kernel = _sgd_streaming_parallel if threaded else _sgd_streaming_serial
    else:
        kernel = _sgd_parallel if threaded else _sgd_serial
    return bool(kernel(params_out, params_in, grad, lr))


def adagrad_step(params_out, params_in, grad, acc_out, acc_in, gamma, eps) -> bool:
    """acc_out <- acc_in + grad^2; params_out <- params_in - gamma * grad / (sqrt(acc_out) + eps),
    all (n,); False when grad holds a NaN or +-Inf (both outputs are then partly written: discard
    them; params_in and acc_in are never written)."""
    threaded, streaming = _threaded(grad.shape[0]), _streaming((params_out, acc_out), (params_in, grad, acc_in))
    if streaming:
        kernel = _adagrad_streaming_parallel if threaded else _adagrad_streaming_serial
    else:
        kernel = _adagrad_parallel if threaded else _adagrad_serial
    return bool(kernel(params_out, params_in, grad, acc_out, acc_in, gamma, eps))


def warm_up() -> None:
    """Load (or compile) the float32 kernels a shard uses: the threaded ones only when it has
    threads (calling one starts Numba's thread pool)."""
    tiny = np.zeros(1, np.float32)
    threaded = numba.get_num_threads() > 1
    for sgd in [_sgd_serial, _sgd_streaming_serial] + ([_sgd_parallel, _sgd_streaming_parallel] if threaded else []):
        sgd(tiny.copy(), tiny, tiny, 0.0)
    adagrads = [_adagrad_serial, _adagrad_streaming_serial]
    for adagrad in adagrads + ([_adagrad_parallel, _adagrad_streaming_parallel] if threaded else []):
        adagrad(tiny.copy(), tiny, tiny, tiny.copy(), np.ones(1, np.float32), 0.0, 1.0)
