"""Are MPI atomics atomic across two windows over the same memory? (issue 14: a replacement
replica reaching a shard through a window created over the shard's existing buffer.)

    mpiexec -n 6 python bench/survival/two_windows.py [N] [--one-window]

Rank 0 hosts an int64 counter in a Win_allocate window A over every rank; window B is a
Win_create over the same buffer on ranks {0, last}. Ranks 1 .. n-2 add 1 through A, rank n-1
through B (--one-window: through A too), N times each, concurrently, each Fetch_and_op flushed.
Rank 0 only drives progress. The counter must end at (n - 1) x N; anything less is a lost update.
"""

import sys
import time

import numpy as np
from mpi4py import MPI

N = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 20000
ONE_WINDOW = "--one-window" in sys.argv
DONE = 1  # tag: an origin has finished its adds


def main() -> None:
    comm = MPI.COMM_WORLD.Dup()
    rank, size = comm.Get_rank(), comm.Get_size()
    last = size - 1
    win_a = MPI.Win.Allocate(8 if rank == 0 else 0, 8, comm=comm)
    if rank == 0:
        np.frombuffer(win_a.tomemory(), np.int64)[0] = 0
    pair = comm.Create_group(comm.Get_group().Incl([0, last])) if rank in (0, last) else None
    win_b = MPI.Win.Create(win_a.tomemory() if rank == 0 else None, 8, comm=pair) if pair is not None else None
    comm.Barrier()
    started = time.perf_counter()
    if rank == 0:
        serve(comm, size - 1, win_b)
    else:
        add(win_b if rank == last and not ONE_WINDOW else win_a)
        comm.send(None, dest=0, tag=DONE)
    comm.Barrier()
    if rank == 0:
        counter, want = int(np.frombuffer(win_a.tomemory(), np.int64)[0]), (size - 1) * N
        print(
            f"ranks {size}, N {N}, {'one window' if ONE_WINDOW else 'two windows'}: counter {counter}, "
            f"expected {want}, lost {want - counter}, {time.perf_counter() - started:.1f} s",
            flush=True,
        )
    if win_b is not None:
        win_b.Free()
    win_a.Free()


def serve(comm, origins: int, win_b) -> None:
    """Passive-target RMA progresses only while the target calls into MPI: poll until all are done."""
    finished = 0
    while finished < origins:
        if comm.Iprobe(source=MPI.ANY_SOURCE, tag=DONE):
            comm.recv(source=MPI.ANY_SOURCE, tag=DONE)
            finished += 1
        if win_b is not None:
            win_b.Lock(0)
            win_b.Unlock(0)
        time.sleep(0)


def add(win) -> None:
    one, old = np.ones(1, np.int64), np.zeros(1, np.int64)
    win.Lock_all()
    for _ in range(N):
        win.Fetch_and_op(one, old, 0, 0, MPI.SUM)
        win.Flush(0)
    win.Unlock_all()


if __name__ == "__main__":
    main()
