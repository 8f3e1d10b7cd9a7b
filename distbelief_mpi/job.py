"""What every rank knows about the job once set-up has succeeded, and what its role returns.

`Job` is built once per rank by train.py and never changed afterwards: roles read it, and
hand their results back in a `RoleResult` instead of writing into it.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint.resume import ResumePoint
from .config import JobSpec
from .data.hdf5 import DatasetInfo
from .layout import Layout, RankRole
from .model.network import Network


@dataclass(frozen=True)
class Job:
    spec: JobSpec
    info: DatasetInfo
    network: Network
    layout: Layout
    role: RankRole  # this rank's
    run_dir: Path
    resume: ResumePoint | None = None  # where a resumed run continues from
    progress: bool = True  # the lead prints progress lines (see progress.wanted)
    init_from: Path | None = None  # --init-from: the params.h5 a new run starts from (None: drawn from the seed)


@dataclass(frozen=True)
class RoleResult:
    """A role's outcome on this rank: the lead has the summary, and the final parameters (N,)
    when it holds them whole (SGD); Downpour and Sandblaster leads write params.h5 themselves,
    streamed from the shards."""

    summary: dict | None = None
    params: np.ndarray | None = None
    lost_ranks: tuple[int, ...] = field(default=())  # world ranks that left mid-run (faults.replica_loss)
