"""MPI start-up: one duplicated world communicator for all library traffic.

mpi4py is imported here, lazily, so `distbelief plan` and the pure modules never load MPI.
"""

import sys


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
    world_comm.Abort(code)


def agree_on_errors(world_comm, error: Exception | None) -> list[tuple[int, str]]:
    """Collective: every rank learns which ranks failed their set-up, so that all stop
    together instead of some waiting forever on the ones that left. Returns
    [(world_rank, message)] for the failed ranks (empty when all are fine)."""
    # Messages, not exception objects: our exceptions take structured arguments that do
    # not survive pickling.
    messages = world_comm.allgather(None if error is None else str(error))
    return [(rank, message) for rank, message in enumerate(messages) if message is not None]
