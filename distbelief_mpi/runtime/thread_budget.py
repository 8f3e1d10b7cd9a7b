"""How many compute threads a rank uses: the job spec, else $SLURM_CPUS_PER_TASK, else 1.

One per rank by default because ranks already occupy the cores; oversubscribing
threads on top of ranks only adds contention.
"""

import os


def threads_for_rank(threads_per_rank: int, environ=os.environ) -> int:
    if threads_per_rank > 0:
        return threads_per_rank
    slurm = environ.get("SLURM_CPUS_PER_TASK", "")
    return int(slurm) if slurm.isdigit() and int(slurm) > 0 else 1
