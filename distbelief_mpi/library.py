"""`train(spec, run_dir)`: a run started from Python, in-process (docs/model_use.md, "Python API").

    from distbelief_mpi import JobSpec, load_model, train
    from distbelief_mpi.config import Data, Model, Optimizer, Run
    from distbelief_mpi.model.spec import LayerSpec

    spec = JobSpec(
        model=Model(layers=(LayerSpec("dense", units=64, activation="relu"),)),
        optimizer=Optimizer(algorithm="sgd", learning_rate=0.05),
        data=Data(path="data/digits.h5"),
        run=Run(steps=500),
    )
    summary = train(spec, "runs/from-python")      # one rank: SGD (or a 1-rank layout)
    probabilities = load_model("runs/from-python").predict(x)

Under `mpiexec -n N python script.py` every rank calls train() with the same spec: it is the same
collective start-up as `distbelief train` (each rank takes its role from the layout), so a
Downpour or Sandblaster job runs from a script too. The spec is checked exactly as a job file is.
"""

import importlib
import json
from pathlib import Path

from .config import JobSpec
from .errors import DistbeliefError


class TrainingFailed(DistbeliefError):
    """train() ended with a nonzero exit code (the message printed on stderr says why);
    exit_code is what `distbelief train` would have returned (2: bad input, 75: preempted)."""

    def __init__(self, run_dir: Path, exit_code: int):
        self.exit_code, self.run_dir = exit_code, run_dir
        super().__init__(f"{run_dir}: training ended with exit code {exit_code} (the reason is on stderr)")


def train(
    spec: JobSpec,
    run_dir: str | Path,
    *,
    resume: str | None = None,
    init_from: str | Path | None = None,
    verbose: bool = False,
    progress: bool = False,
) -> dict | None:
    """Train `spec` into run_dir (which must not hold a run, unless resume="auto"); returns the
    run's summary.json as a dict, on every rank that can read run_dir (None where it cannot, e.g.
    a rank on a node without the shared file system). resume: None, "auto" (continue run_dir's
    newest checkpoint if any) or a RUN_DIR; init_from: a RUN_DIR or params.h5 to start from.
    Raises TrainingFailed when the run does not end with exit code 0. Signal handling (preemption
    by SIGTERM / SIGUSR1) is the calling program's: this call installs no handlers."""
    # Imported by name: train.py and the roles are MPI code, outside the files mypy checks
    # (pyproject.toml), and a plain import here would pull them in through __init__'s exports.
    run_train = importlib.import_module(".train", __package__).run_train
    run_dir = Path(run_dir)
    code = run_train(
        spec,
        [],
        str(run_dir),
        verbose,
        resume,
        progress,
        str(init_from) if init_from is not None else None,
    )
    if code:
        raise TrainingFailed(run_dir, code)
    summary = run_dir / "summary.json"
    if not summary.exists():
        return None
    return json.loads(summary.read_text(encoding="utf-8"))
