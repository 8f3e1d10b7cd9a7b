"""distbelief-mpi: DistBelief-style distributed training (Downpour SGD, Sandblaster L-BFGS) over MPI."""

import os
import typing

# OpenBLAS's idle threads keep polling with sched_yield for up to 2^28 cycles (~0.1 s) after each
# call. A rank's Numba kernels run between its BLAS calls on the same cores, so those pollers took
# cores from them: the LC network's SGD step ran 1.02-1.04x faster on 2 threads than on 1, and
# 1.32-1.58x with idle BLAS threads sleeping at once (docs/architecture.md, "Threads in a rank").
# OpenBLAS reads this when it loads, with NumPy: this package imports nothing before this line,
# so it holds for the `distbelief` command; a value set by the user is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"

__all__ = ["JobSpec", "load_model", "train"]

if typing.TYPE_CHECKING:
    from .api import load_model as load_model
    from .config import JobSpec as JobSpec
    from .library import train as train

# name -> (module, attribute): imported on first use
_LAZY = {"load_model": (".api", "load_model"), "JobSpec": (".config", "JobSpec"), "train": (".library", "train")}


def __getattr__(name: str):
    """Lazy exports: `import distbelief_mpi` stays light (no NumPy or h5py until used)."""
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module, __name__), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
