"""Only rank 1 fails its set-up; every rank must learn that (and which rank) collectively."""

from distbelief_mpi.comm.world import agree_on_errors
from distbelief_mpi.errors import UserInputError


def main(world_comm, args):
    rank = world_comm.Get_rank()
    error = UserInputError("rank one is unhappy") if rank == 1 else None
    failed = agree_on_errors(world_comm, error)
    return {
        "failed_ranks": [r for r, _, _ in failed],
        "codes": [code for _, code, _ in failed],
        "messages": [message for _, _, message in failed],
    }
