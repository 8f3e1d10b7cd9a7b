"""How many threads the compute kernels use: Numba's pool and every loaded BLAS, together."""

import numba
from threadpoolctl import threadpool_limits

_blas_limit = None  # keep the limiter alive; threadpoolctl applies the limit until it is undone


def set_compute_threads(n: int) -> None:
    """Use n threads for Numba kernels and BLAS (the trainer's default is 1 per rank).

    n is clipped to Numba's configured maximum (NUMBA_NUM_THREADS). Call it before any
    BLAS-heavy work; it also covers BLAS libraries loaded earlier (numpy's, scipy's for Numba).
    """
    global _blas_limit
    if n < 1:
        raise ValueError(f"compute threads must be >= 1, got {n}")
    # Numba's np.dot calls scipy's BLAS: load it now so the limit below reaches it too
    import scipy.linalg.cython_blas  # noqa: F401

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    _blas_limit = threadpool_limits(limits=n, user_api="blas")
