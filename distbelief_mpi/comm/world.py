"""MPI start-up: one duplicated world communicator for all library traffic.

mpi4py is imported here, lazily, so `distbelief plan` and the pure modules never load MPI.
"""

import faulthandler
import sys

# MPI_Abort hands the job to the launcher. Across hosts Hydra's proxies have been seen to take
# 30 s (CI: a second rank's abort while the launcher was already ending the job for the first);
# a rank still alive this long after calling it exits on its own, the launcher ends the rest.
ABORT_DEADLINE_S = 10.0


def init_world():
    """Return (world_comm, world_rank, world_size). Duplicates COMM_WORLD once so our
    messages never collide with a user's or another library's."""
    from mpi4py import MPI

    world_comm = MPI.COMM_WORLD.Dup()
    return world_comm, world_comm.Get_rank(), world_comm.Get_size()


def abort_job(world_comm, code: int) -> None:
    """End every rank of the job (used after an unexpected error on one rank, so others never hang)."""
    sys.stdout.flush()
    sys.stderr.flush()
    # C-level timer: runs even if MPI_Abort blocks holding the GIL; replaces a watchdog's timer
    faulthandler.dump_traceback_later(ABORT_DEADLINE_S, exit=True, file=sys.__stderr__)
    world_comm.Abort(code)


def abort_world(code: int) -> None:
    """abort_job over COMM_WORLD (for a watchdog that fires before any communicator exists)."""
    from mpi4py import MPI

    abort_job(MPI.COMM_WORLD, code)


def agree_on_errors(world_comm, error: Exception | None) -> list[tuple[int, int, str]]:
    """Collective: every rank learns which ranks failed their set-up, so that all stop
    together instead of some waiting forever on the ones that left. Returns
    [(world_rank, exit_code, message)] for the failed ranks (empty when all are fine);
    exit_code is 2 for bad input (UserInputError), 1 for anything else."""
    # Messages, not exception objects: our exceptions take structured arguments that do
    # not survive pickling. The common case (no error anywhere) costs one reduction of a
    # flag; the messages are gathered only when some rank failed.
    if not any_rank(world_comm, error is not None):
        return []
    mine = None if error is None else (getattr(error, "exit_code", 1), str(error))
    gathered = gather_to_all(world_comm, mine)
    return [(rank, item[0], item[1]) for rank, item in enumerate(gathered) if item is not None]


def any_rank(world_comm, flag: bool) -> bool:
    """Collective: True on every rank when `flag` is True on at least one (one reduction)."""
    from mpi4py import MPI

    return bool(world_comm.allreduce(bool(flag), op=MPI.LOR))


def broadcast(world_comm, value, root: int):
    """Collective: `root`'s value (a small picklable object) on every rank."""
    return world_comm.bcast(value, root=root)


def broadcast_sleeping(world_comm, value, root: int):
    """broadcast for a value `root` may take long to compute (hashing a checkpoint): the others
    wait in a sleeping barrier first, so they do not spin on the cores root is working on."""
    from .control import barrier_sleeping

    barrier_sleeping(world_comm)
    return broadcast(world_comm, value, root)


def gather_to_all(world_comm, value) -> list:
    """Collective: every rank's value (small, picklable), in rank order, on every rank."""
    return world_comm.allgather(value)


def gather_to_root(world_comm, value, root: int) -> list | None:
    """Collective: every rank's value (small, picklable), in rank order, on `root`; None elsewhere.
    For rare paths (naming what differs): it costs `root` one message per rank."""
    return world_comm.gather(value, root=root)


def max_to_root(world_comm, values: list[int], root: int) -> list[int] | None:
    """Collective: the element-wise maximum of every rank's `values` (a few integers) on `root`,
    None elsewhere. Waits sleeping: it is called at the end of a run, when some ranks wait
    long for others to finish (control.wait_sleeping)."""
    import numpy as np
    from mpi4py import MPI

    from .control import wait_sleeping

    mine, most = np.asarray(values, np.int64), np.zeros(len(values), np.int64)
    wait_sleeping(world_comm.Ireduce(mine, most, op=MPI.MAX, root=root))
    return [int(v) for v in most] if world_comm.Get_rank() == root else None


def barrier(world_comm) -> None:
    """Collective: return once every rank has called it (start-up only: it spins while it waits)."""
    world_comm.Barrier()
