"""Survival experiment: one rank leaves a job that holds RMA windows (Lock_all).

usage: python leave.py LEAVE_MODE SURVIVOR_END
  LEAVE_MODE 1..8 (see MODES), SURVIVOR_END A|B|C
Rank 0 = shard (hosts window memory), ranks 1..N-2 = workers, rank N-1 = leaver
(a worker until it leaves at t=0.5 s).
"""

import os
import signal
import sys
import time

from mpi4py import MPI

MODES = {
    0: "no leave (control)",
    1: "os._exit(0)",
    2: "os._exit(3)",
    3: "sys.exit(0)",
    4: "uncaught exception",
    5: "SIGKILL self",
    6: "SIGTERM self",
    7: "SIGSTOP self",
    8: "MPI.Finalize(); os._exit(0)",
}

mode = int(sys.argv[1])
end = sys.argv[2]
T0 = time.time()
world = MPI.COMM_WORLD
world.Set_errhandler(MPI.ERRORS_RETURN)
comm = world.Dup()
comm.Set_errhandler(MPI.ERRORS_RETURN)
rank, size = comm.Get_rank(), comm.Get_size()
LEAVER = size - 1
WORK_S = 2.0
LEAVE_AT = 0.5


def log(*a):
    print(f"[{time.time() - T0:6.2f}] R{rank} " + " ".join(str(x) for x in a), flush=True)


itemsize = MPI.DOUBLE.Get_size()
nelem = 16 if rank == 0 else 1
win = MPI.Win.Allocate(nelem * itemsize, itemsize, comm=comm)
win.Set_errhandler(MPI.ERRORS_RETURN)
import numpy as np  # noqa: E402

buf = np.frombuffer(win.tomemory(), dtype=np.float64)
buf[:] = 0.0
comm.Barrier()
win.Lock_all()
log(
    "START",
    "pid",
    os.getpid(),
    "pgid",
    os.getpgid(0),
    MPI.Get_library_version().splitlines()[0],
    "mode",
    mode,
    MODES[mode],
    "end",
    end,
)


def leave():
    log("LEAVING", MODES[mode])
    if mode == 1:
        os._exit(0)
    elif mode == 2:
        os._exit(3)
    elif mode == 3:
        sys.exit(0)
    elif mode == 4:
        raise RuntimeError("leaver: uncaught exception")
    elif mode == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == 6:
        os.kill(os.getpid(), signal.SIGTERM)
    elif mode == 7:
        os.kill(os.getpid(), signal.SIGSTOP)
        log("CONTINUED after SIGSTOP (unexpected)")
        os._exit(0)
    elif mode == 8:
        MPI.Finalize()
        log("LEAVER FINALIZED")
        os._exit(0)
    time.sleep(100)


errors = 0
ops = 0
one = np.ones(1, dtype=np.float64)
old = np.zeros(1, dtype=np.float64)
start = time.time()
if rank == 0:
    # shard: poll for messages (progress) while workers hit the window
    while time.time() - start < WORK_S:
        try:
            comm.Iprobe(MPI.ANY_SOURCE, 99)
        except MPI.Exception as e:
            errors += 1
            log("ERR Iprobe", e.Get_error_string())
        time.sleep(0.005)
else:
    while time.time() - start < WORK_S:
        if rank == LEAVER and mode != 0 and time.time() - start >= LEAVE_AT:
            leave()
        try:
            win.Accumulate(one, 0, target=(rank, 1, MPI.DOUBLE), op=MPI.SUM)
            win.Fetch_and_op(one, old, 0, target_disp=0, op=MPI.SUM)
            win.Flush(0)
            ops += 1
        except MPI.Exception as e:
            errors += 1
            log("ERR rma", e.Get_error_string())
        time.sleep(0.1)
log("WORK_DONE ops", ops, "errors", errors)

# p2p exchange among survivors (ranks 0..LEAVER-1): everyone -> 0, 0 replies
try:
    if rank == 0:
        for src in range(1, LEAVER):
            msg = comm.recv(source=src, tag=7)
            comm.send(("ack", msg), dest=src, tag=8)
        log("P2P_DONE shard counters", buf[: LEAVER + 1].tolist())
    elif rank < LEAVER:
        comm.send(rank, dest=0, tag=7)
        r = comm.recv(source=0, tag=8)
        log("P2P_DONE got", r)
except MPI.Exception as e:
    log("ERR p2p", e.Get_error_string())

sys.stdout.flush()
if end == "A":
    for name, fn in (("UNLOCKED", win.Unlock_all), ("FREED", win.Free), ("FINALIZED", MPI.Finalize)):
        try:
            log("TRY", name)
            fn()
            log(name)
        except MPI.Exception as e:
            log("ERR", name, e.Get_error_string())
elif end == "B":
    try:
        log("TRY", "FINALIZED")
        MPI.Finalize()
        log("FINALIZED")
    except MPI.Exception as e:
        log("ERR FINALIZED", e.Get_error_string())
elif end == "C":
    log("OS_EXIT")
    sys.stdout.flush()
    os._exit(0)
log("PYEXIT")
