"""distbelief-mpi: DistBelief-style distributed training (Downpour SGD, Sandblaster L-BFGS) over MPI."""

__version__ = "0.1.0"
