"""Open MPI's osc ucx and Fetch_and_op(MPI_SUM) on MPI_DOUBLE (docs/reliability.md, point 5 of
"Replacing a lost replica"). Two ranks; rank 1 adds 1.0 to rank 0's double word twice
(Accumulate, then Fetch_and_op) and 1 to an int64 word (Fetch_and_op); rank 0 prints both, for a
Win_allocate and a Win_create window. Right: "double word: 2.0 int word: 1".

    O=/tmp/ompi-venv/bin/python
    for osc in ucx,sm ucx; do
        /usr/bin/mpiexec.openmpi --allow-run-as-root --oversubscribe --mca osc $osc -n 2 $O fetch_and_op_double.py
    done

Measured (Open MPI 4.1.4, Debian): osc ucx,sm: allocate 2.0 (osc sm), create 8.99e307; osc ucx:
both 8.99e307 (2^1023: 1.0's bit pattern added to itself as an integer); the int64 word is 1 in
every case.
"""

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD


def windows():
    yield "allocate", MPI.Win.Allocate(64, 8, comm=comm)
    yield "create", MPI.Win.Create(np.zeros(8) if comm.rank == 0 else np.zeros(0), 8, comm=comm)


for name, win in windows():
    words = np.frombuffer(win.tomemory(), np.float64) if comm.rank == 0 else None
    if words is not None:
        words[:] = 0
    comm.Barrier()
    win.Lock_all()
    if comm.rank == 1:
        old, old_int = np.zeros(1), np.zeros(1, np.int64)
        win.Accumulate(np.ones(1), 0, target=(0, 1, MPI.DOUBLE), op=MPI.SUM)
        win.Flush(0)
        win.Fetch_and_op(np.ones(1), old, 0, target_disp=0, op=MPI.SUM)
        win.Fetch_and_op(np.ones(1, np.int64), old_int, 0, target_disp=1, op=MPI.SUM)
        win.Flush(0)
    comm.Barrier()
    if words is not None:
        print(name, "double word:", words[0], "int word:", words[1:2].view(np.int64)[0], flush=True)
    win.Unlock_all()
    win.Free()
