"""Run `distbelief ARGS...` in this rank and write its peak RSS to OUT_DIR/rank-R.rss at the end.

    mpiexec -n N python bench/rss_of_rank.py OUT_DIR train JOB.toml ...

Measures any version of the code the same way (no help from the code under test): used by
bench/memory_per_rank.py to compare memory per rank before and after a change, side by side.
"""

import os
import resource
import sys
from pathlib import Path


def rank() -> str:
    for key in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        if key in os.environ:
            return os.environ[key]
    return "0"


def main() -> int:
    out_dir, args = Path(sys.argv[1]), sys.argv[2:]
    from distbelief_mpi.cli import main as distbelief

    code = distbelief(args)
    out_dir.mkdir(parents=True, exist_ok=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    (out_dir / f"rank-{rank()}.rss").write_text(str(peak))
    return code


if __name__ == "__main__":
    sys.exit(main())
