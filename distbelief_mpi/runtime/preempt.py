"""Graceful preemption: SIGTERM (Slurm's warning before a kill, see sbatch --signal) or
SIGUSR1 ends the run after the current step, with a final committed checkpoint.

The handler only sets a flag; the minibatch loop reads it between steps, so no step is cut
in half and no MPI call is interrupted. mpiexec (MPICH's Hydra) and srun deliver the signal
to every rank. The job then exits with EXIT_PREEMPTED (75, sysexits' EX_TEMPFAIL: "try
again later"), which the sbatch scripts turn into `scontrol requeue`; the requeued job
continues with `--resume auto`.
"""

import signal

EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_requested: list[int] = []


def install() -> None:
    """Catch the preemption signals (call once per process, from the main thread)."""
    for signum in SIGNALS:
        signal.signal(signum, _note)


def _note(signum, frame) -> None:
    _requested.append(signum)


def survive_process_failures() -> None:
    """faults.replica_loss = continue: MPICH's launcher, run with -disable-auto-cleanup,
    tells the survivors that a process has exited by sending them SIGUSR1 (measured). That
    is not a preemption: only SIGTERM is, then. The shards notice the loss themselves."""
    signal.signal(signal.SIGUSR1, _note_process_failure)


def _note_process_failure(signum, frame) -> None:
    import logging

    logging.getLogger(__name__).warning("the launcher reports that a process of the job has exited (SIGUSR1)")


def requested() -> bool:
    return bool(_requested)


def request() -> None:
    """Another rank was preempted: stop here too (see roles/downpour/hooks.py)."""
    _requested.append(0)


def reset() -> None:
    """For tests running several jobs in one process."""
    _requested.clear()
