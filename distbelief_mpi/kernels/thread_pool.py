"""How many threads the compute kernels use: Numba's pool and every loaded BLAS, together.

A rank runs on n = `threads_per_rank` threads, and Numba and BLAS together never use more than n:

- outside our kernels (a dense layer's matmul) BLAS uses n threads and Numba's pool waits;
- our kernels are Numba `parallel=True` loops over n threads; the ones that call BLAS per item
  inside the loop (the locally connected layer: one small GEMM per output position) run under
  `blas_single_threaded()`, so each of the n Numba threads calls a one-thread BLAS.

Numba's threading layer is its default choice (tbb, else omp, else workqueue); `threading_layer()`
says which one loaded. `workqueue` must not be entered by two Python threads at once (Numba aborts
the process), which the partition tests do; `omp` (GNU libgomp) and `tbb` allow it.
"""

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numba
from threadpoolctl import ThreadpoolController, threadpool_limits

# GNU OpenMP's idle threads spin after each parallel region before they sleep (GOMP_SPINCOUNT
# rounds; 300,000 by default: milliseconds). Between our kernels a rank runs BLAS on the same cores,
# so a long spin takes a core from a BLAS thread; sleeping at once (OMP_WAIT_POLICY=PASSIVE) costs
# a wake-up (~25 us) per kernel instead, paid many times in a step of sub-millisecond kernels. A
# short spin keeps the pool awake from one kernel to the next and asleep through a matmul. Measured
# on 2 cores (bench/kernels.py --rounds 9, the LC network's SGD step, 2 vs 1 threads, medians of 5-6
# runs): passive 1.49x, 500 rounds 1.73x; 2,000 rounds 1.10-1.50x; 20,000-300,000 0.94-0.97x.
# libgomp reads this when Numba loads it, at the first parallel launch, i.e. after this import; a
# user's OMP_WAIT_POLICY or GOMP_SPINCOUNT is kept (docs/architecture.md, "Threads in a rank").
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "500"

_blas_limit = None  # keep the limiter alive; threadpoolctl applies the limit until it is undone
_blas_threads: int | None = None  # what set_compute_threads gave BLAS (None: never called)
_pin_lock = threading.Lock()
_pin_depth = 0  # how many callers are inside blas_single_threaded(), over all Python threads
_pin_restore: list = []  # (setter, threads) to restore when the last caller leaves
_blas_libs: list | None = None  # (threadpoolctl controller, setter) of each loaded BLAS library


def _load_numba_blas() -> None:
    # Numba's np.dot calls scipy's BLAS: load it so limits reach it too
    import scipy.linalg.cython_blas  # noqa: F401


def set_compute_threads(n: int) -> None:
    """Use n threads for Numba kernels and BLAS (the trainer's default is 1 per rank).

    n is clipped to Numba's configured maximum (NUMBA_NUM_THREADS) for Numba's pool. Call it before
    any BLAS-heavy work; it also covers BLAS libraries loaded earlier (numpy's, scipy's for Numba).
    """
    global _blas_limit, _blas_threads, _blas_libs
    if n < 1:
        raise ValueError(f"compute threads must be >= 1, got {n}")
    _load_numba_blas()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    with _pin_lock:
        _blas_limit = threadpool_limits(limits=n, user_api="blas")
        _blas_threads = n
        _blas_libs = _find_blas_libs()  # here, not in a kernel: finding them takes about a millisecond


def threading_layer() -> str:
    """Numba's threading layer ('tbb', 'omp' or 'workqueue'); runs a tiny parallel kernel to load it."""
    _touch_pool(1)
    return str(numba.threading_layer())


@numba.njit(cache=True, nogil=True, parallel=True)
def _touch_pool(n):
    out = 0
    for i in numba.prange(n):
        out += i
    return out


@contextmanager
def blas_single_threaded() -> Iterator[None]:
    """BLAS on one thread inside the block: for kernels whose Numba threads each call BLAS.

    Reference-counted over Python threads: the limit is set when the first caller enters and
    undone when the last one leaves, so overlapping callers (partitions run as threads in the
    tests) never leave BLAS stuck at one thread. A plain set/restore pair could: A pins (saves n),
    B pins (saves 1), A restores n, B restores 1.
    """
    global _pin_depth, _pin_restore, _blas_libs
    with _pin_lock:
        if _pin_depth == 0:
            if _blas_libs is None:
                _blas_libs = _find_blas_libs()
            _pin_restore = [(setter, _blas_threads or lib.num_threads) for lib, setter in _blas_libs]
            for setter, _ in _pin_restore:
                setter(1)
        _pin_depth += 1
    try:
        yield
    finally:
        with _pin_lock:
            _pin_depth -= 1
            if _pin_depth == 0:
                for setter, threads in _pin_restore:
                    setter(_blas_threads or threads)  # set_compute_threads may have run meanwhile


def _find_blas_libs() -> list:
    _load_numba_blas()
    return [_thread_setter(lib) for lib in ThreadpoolController().select(user_api="blas").lib_controllers]


def _thread_setter(lib):
    """(lib, a function n -> None that sets lib's thread count from any Python thread).

    threadpoolctl's OpenBLAS controller ignores set_num_threads from every thread but the first that
    called it (a pthreads OpenBLAS has one pool per process, and it guards against two threads
    fighting over it); our reference count is that guard, so call OpenBLAS's own setter.
    """
    if lib.internal_api == "openblas":
        for prefix in ("", "scipy_"):
            for suffix in ("", "64_", "_64"):
                setter = getattr(lib.dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
                if setter is not None:
                    return lib, setter
    return lib, lib.set_num_threads
