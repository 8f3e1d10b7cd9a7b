"""The run directory every training run writes.

RUN_DIR/job.toml          the resolved job spec (every key, defaults included; data.path absolute)
RUN_DIR/metrics.jsonl     one JSON object per line: training windows and evaluations
RUN_DIR/summary.json      the figures a user asks first (written at the end)
RUN_DIR/params.h5         the final parameters (flat float32 vector)
RUN_DIR/model.h5          the trained model, self-contained (checkpoint/model_file.py, docs/model_use.md)
RUN_DIR/checkpoints/      committed checkpoints (see checkpoint/store.py)
RUN_DIR/logs/rank-N.log   one log per rank
RUN_DIR/tensorboard/      with run.tensorboard: the same figures as TensorBoard scalars (tensorboard_sink.py)
"""

import dataclasses
import json
import time
from pathlib import Path

from ..config import JobSpec, to_toml
from ..errors import UserInputError
from .files import write_text_atomic
from .tensorboard_sink import TensorBoardSink, directory_for, write_summary_scalars


def default_run_dir(job_path: str) -> Path:
    """runs/<job file stem>-<local time>, e.g. runs/digits_mlp-20261124-081500 (then -2, -3,
    ... when a run started in the same second already has that name)."""
    base = Path("runs") / f"{Path(job_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, count = base, 1
    while path.exists():
        count += 1
        path = base.with_name(f"{base.name}-{count}")
    return path


def prepare_run_dir(path: Path, spec: JobSpec, mode: str = "new") -> Path:
    """Create the run directory and write the resolved spec.

    mode "new" refuses a directory that already holds a run, so nothing of an earlier run is
    overwritten; "resume" continues one (the spec, with any new overrides such as a longer
    run.steps, replaces job.toml); "restart" (--resume auto before any checkpoint) starts it
    again, keeping the abandoned attempt's metrics as metrics-abandoned-N.jsonl."""
    path = Path(path)
    if mode == "restart" and (path / "metrics.jsonl").exists():
        attempt = 1 + len(list(path.glob("metrics-abandoned-*.jsonl")))
        (path / "metrics.jsonl").rename(path / f"metrics-abandoned-{attempt}.jsonl")
    if (path / "job.toml").exists() and mode == "new":
        raise UserInputError(f"{path}: already holds a run (job.toml exists); choose a new --run-dir")
    try:
        (path / "logs").mkdir(parents=True, exist_ok=True)
        write_text_atomic(path / "job.toml", to_toml(with_absolute_paths(spec)))
    except OSError as exc:
        raise UserInputError(f"{path}: cannot create the run directory: {exc.strerror or exc}") from None
    return path


def with_absolute_paths(spec: JobSpec) -> JobSpec:
    """data.path resolved against the working directory: the job.toml a run keeps then works
    from anywhere (`distbelief eval RUN`, --resume from another directory)."""
    if not spec.data.path:
        return spec
    data = dataclasses.replace(spec.data, path=str(Path(spec.data.path).resolve()))
    return dataclasses.replace(spec, data=data)


def write_summary(path: Path, summary: dict) -> None:
    write_text_atomic(Path(path) / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    write_summary_scalars(Path(path), summary)


class MetricsLog:
    """Appends one JSON object per line to RUN_DIR/metrics.jsonl, flushed at once so a
    crashed or killed run keeps everything logged before the crash. A context manager.
    With run.tensorboard (read from RUN_DIR/job.toml) every record also goes to TensorBoard."""

    def __init__(self, run_dir: Path):
        self.handle = open(Path(run_dir) / "metrics.jsonl", "a", encoding="utf-8")
        directory = directory_for(run_dir)
        self.tensorboard = TensorBoardSink(directory) if directory is not None else None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def write(self, record: dict) -> None:
        self.handle.write(json.dumps(record, sort_keys=True) + "\n")
        self.handle.flush()
        if self.tensorboard is not None:
            self.tensorboard.record(record)

    def close(self) -> None:
        self.handle.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
