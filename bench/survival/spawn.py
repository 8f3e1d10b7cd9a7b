"""Replacement probe: after one rank leaves, can the survivors spawn a new one and reach the shard?

usage: python spawn.py LEAVE_MODE SPAWN_FROM END [runtag=...]
  LEAVE_MODE 0 (nobody leaves), 1 (os._exit(1): exit without MPI_Finalize), 5 (SIGKILL self),
             9 (os._exit(1) 0.2 s after the lead starts its MPI_Comm_spawn: a loss during a replacement)
  SPAWN_FROM group (the survivors' communicator spawns, root = the lead) | self (the lead's COMM_SELF)
  END exit (free the new window, then os._exit(0)) | finalize (free it, disconnect, MPI_Finalize)
Ranks (4, our run's shape): 0 = shard (hosts the window memory), 1 = lead (replica 0), 2 = a
bystander replica, 3 = the leaver (a replica until it leaves at t = 0.5 s; in the control run,
mode 0, a second bystander). Every rank holds Lock_all on a window of a dup of COMM_WORLD, as our
runs do. The bystanders keep accumulating into the shard on that window throughout, as the other
replicas of a run would; the shard and the lead try, one step at a time:
  a  create_group  MPI_Comm_create_group over {shard, lead} (neither the leaver nor a bystander)
  b  spawn         MPI_Comm_spawn of one process (this script, "child" role), root = the lead
  c  merge         MPI_Intercomm_merge of the spawn's intercommunicator
  d  window        Win_create over the shard's existing buffer on the merged communicator,
                   Lock_all, the child's Accumulate / Fetch_and_op / Get on the shard
                   (SPAWN_FROM self: the merged group lacks the shard, the lead hosts it instead)
  e  end           as END says; the runner records mpiexec's exit code and leftover processes
Each step logs `TRY step` and `OK step ...` (or `ERR step ...`); a step that does not return
within STEP_TIMEOUT s logs `HUNG step after N s` and the rank exits 70.
"""

import os
import signal
import sys
import threading
import time

import numpy as np
from mpi4py import MPI

STEP_TIMEOUT = 15.0
LEAVE_AT, WORK_S = 0.5, 1.5
SHARD, LEAD, BYSTANDER, LEAVER = 0, 1, 2, 3
T0 = time.time()
WHO = "C" if MPI.Comm.Get_parent() != MPI.COMM_NULL else f"R{MPI.COMM_WORLD.Get_rank()}"


def log(*words) -> None:
    print(f"[{time.time() - T0:6.2f}] {WHO} " + " ".join(str(w) for w in words), flush=True)


def step(name: str, call):
    """Run call() with a deadline: a hang is logged as one and ends this process (exit 70)."""
    log("TRY", name)
    timer = threading.Timer(STEP_TIMEOUT, lambda: (log("HUNG", name, f"after {STEP_TIMEOUT:g} s"), os._exit(70)))
    timer.daemon = True
    timer.start()
    try:
        result = call()
    except MPI.Exception as error:
        timer.cancel()
        log("ERR", name, error.Get_error_string().splitlines()[0])
        os._exit(71)
    timer.cancel()
    log("OK", name)
    return result


def leave(mode: int) -> None:
    log("LEAVING mode", mode)
    if mode == 1:
        os._exit(1)
    os.kill(os.getpid(), signal.SIGKILL)


def traffic(win, rank: int, mode: int) -> None:
    """Workers Accumulate into the shard's word 1 + rank for WORK_S s; the leaver leaves midway."""
    one, start = np.ones(1), time.time()
    while time.time() - start < WORK_S:
        if rank == LEAVER and mode in (1, 5) and time.time() - start >= LEAVE_AT:
            leave(mode)
        if rank != SHARD:
            win.Accumulate(one, SHARD, target=(1 + rank, 1, MPI.DOUBLE), op=MPI.SUM)
            win.Flush(SHARD)
        else:  # as our shards poll: MPI progress (without it a late rank can wait in Lock_all)
            MPI.COMM_WORLD.Iprobe(MPI.ANY_SOURCE, 99)
        time.sleep(0.05)


def wait_gone(pid: int) -> None:
    """Until the leaver's process has exited or is a zombie (same host), as our shards find it."""
    for _ in range(400):  # 20 s: on a loaded machine the leaver may start late
        if _gone(pid):
            log("LEAVER_GONE")
            return
        MPI.COMM_WORLD.Iprobe(MPI.ANY_SOURCE, 99)
        time.sleep(0.05)
    log("LEAVER_STILL_THERE")


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def new_window(merged, exposed: np.ndarray | None, target: int, child: bool):
    """(d): a window over `exposed` (the host's) on the merged communicator; the child
    accumulates 1 into word 8, fetches word 8 and gets words 0..3 from `target`."""
    memory = exposed if exposed is not None else np.zeros(0)
    win = step("d.win_create", lambda: MPI.Win.Create(memory, 8, comm=merged))
    win.Set_errhandler(MPI.ERRORS_RETURN)
    step("d.lock_all", win.Lock_all)
    if child:
        got, old = np.zeros(4), np.zeros(1)

        def rma():
            win.Accumulate(np.ones(1), target, target=(8, 1, MPI.DOUBLE), op=MPI.SUM)
            win.Fetch_and_op(np.ones(1), old, target, target_disp=8, op=MPI.SUM)
            win.Get(got, target, target=(0, 4, MPI.DOUBLE))
            win.Flush(target)

        step("d.rma", rma)
        log("RMA_RESULT fetched word 8 =", old[0], "words 0..3 =", got.tolist())
    step("d.barrier", merged.Barrier)
    if exposed is not None:
        log("HOST_SEES word 8 =", exposed[8], "(2.0 expected: the child's Accumulate and Fetch_and_op)")
    return win


def finish(end: str, win, merged, intercomm) -> None:
    """(e): free the new window, then leave with _exit or disconnect and MPI_Finalize."""
    if win is not None:
        step("e.unlock_free", lambda: (win.Unlock_all(), win.Free()))
    if end == "exit":
        log("OS_EXIT")
        os._exit(0)
    if merged is not None:
        step("e.merged_free", merged.Free)
        step("e.disconnect", intercomm.Disconnect)
    step("e.finalize", MPI.Finalize)
    log("PYEXIT")


def child(end: str) -> None:
    parent = MPI.Comm.Get_parent()
    log("START child pid", os.getpid(), "on", MPI.Get_processor_name())
    merged = step("c.merge", lambda: parent.Merge(high=True))
    log("MERGED rank", merged.Get_rank(), "of", merged.Get_size())
    target = 0  # the shard (group) or the lead (self): the low group's first rank
    win = new_window(merged, None, target, child=True)
    finish(end, win, merged, parent)


def bystand(win, comm, rank: int, end: str) -> None:
    """A replica outside the replacement: it keeps accumulating into the shard's word 1 + rank on
    the old window until the lead says the replacement is over (tag 9), then ends."""
    one, ops = np.ones(1), 0
    while not comm.Iprobe(source=LEAD, tag=9):
        win.Accumulate(one, SHARD, target=(1 + rank, 1, MPI.DOUBLE), op=MPI.SUM)
        win.Flush(SHARD)
        ops += 1
        time.sleep(0.05)
    comm.recv(source=LEAD, tag=9)
    log("BYSTANDER_OPS during the replacement", ops)
    comm.send("stopped", dest=SHARD, tag=11)  # the shard's memory must outlive our last access
    finish(end, None, None, None)


def wait_stopped(comm, bystanders: list[int]) -> None:
    """The shard: until every bystander has made its last access to the old window."""
    for other in bystanders:
        comm.recv(source=other, tag=11)


def leave_during_spawn(comm) -> None:
    """Mode 9: a bystander until the lead says it starts spawning, then it exits 0.2 s later."""
    while not comm.Iprobe(source=LEAD, tag=10):
        time.sleep(0.01)
    time.sleep(0.2)
    leave(1)


def parent(mode: int, spawn_from: str, end: str, tag: str) -> None:
    world = MPI.COMM_WORLD
    world.Set_errhandler(MPI.ERRORS_RETURN)
    comm = world.Dup()
    comm.Set_errhandler(MPI.ERRORS_RETURN)
    rank = comm.Get_rank()
    pids = comm.allgather(os.getpid())
    win = MPI.Win.Allocate(16 * 8 if rank == SHARD else 0, 8, comm=comm)
    win.Set_errhandler(MPI.ERRORS_RETURN)
    buf = np.frombuffer(win.tomemory(), np.float64)
    buf[:] = 0.0
    comm.Barrier()
    win.Lock_all()
    log(
        "START pid",
        pids[rank],
        "on",
        MPI.Get_processor_name(),
        MPI.Get_library_version().splitlines()[0],
        "mode",
        mode,
        spawn_from,
        end,
    )
    traffic(win, rank, mode)
    bystanders = [BYSTANDER] + ([LEAVER] if mode == 0 else [])
    if rank in bystanders:
        return bystand(win, comm, rank, end)
    if rank == LEAVER and mode == 9:
        return leave_during_spawn(comm)
    if mode in (1, 5):
        wait_gone(pids[LEAVER])
    survivors = step("a.create_group", lambda: comm.Create_group(comm.Get_group().Incl([SHARD, LEAD]), 7))
    log("SURVIVORS rank", survivors.Get_rank(), "of", survivors.Get_size())
    if spawn_from == "self" and rank == SHARD:  # not in the spawned group: waits for the lead's word
        step("b.wait_lead", lambda: survivors.recv(source=1, tag=8))
        log("OLD_WINDOW shard words 0..4 =", buf[:5].tolist())
        wait_stopped(comm, bystanders)
        return finish(end, None, None, None)
    args = [os.path.abspath(__file__), "child", str(mode), spawn_from, end, f"runtag={tag}"]
    spawner = survivors if spawn_from == "group" else MPI.COMM_SELF
    root = LEAD if spawn_from == "group" else 0
    if mode == 9 and rank == LEAD:
        comm.send("spawning", dest=LEAVER, tag=10)
    intercomm = step("b.spawn", lambda: spawner.Spawn(sys.executable, args, maxprocs=1, root=root))
    merged = step("c.merge", lambda: intercomm.Merge(high=False))
    log("MERGED rank", merged.Get_rank(), "of", merged.Get_size())
    exposed = buf if rank == SHARD else np.zeros(16) if spawn_from == "self" else None
    new = new_window(merged, exposed, 0, child=False)
    if rank == SHARD:
        log("OLD_WINDOW shard words 0..4 =", buf[:5].tolist())
    if rank == LEAD:  # the old window still carries traffic after the spawn
        step("d.old_window", lambda: (win.Accumulate(np.ones(1), SHARD, target=(2, 1, MPI.DOUBLE)), win.Flush(SHARD)))
        for other in bystanders:
            comm.send("over", dest=other, tag=9)
        if spawn_from == "self":
            survivors.send("done", dest=0, tag=8)
    if rank == SHARD:
        wait_stopped(comm, bystanders)
    finish(end, new, merged, intercomm)


if __name__ == "__main__":
    tag = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("runtag=")), "")
    if sys.argv[1] == "child":
        child(sys.argv[4])
    else:
        parent(int(sys.argv[1]), sys.argv[2], sys.argv[3], tag)
