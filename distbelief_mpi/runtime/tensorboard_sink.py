"""Optional TensorBoard scalars on the lead (run.tensorboard = true): every metrics.jsonl record
and, at the end, summary.json's rate and (Downpour) staleness, as event files under
RUN_DIR/tensorboard (or run.tensorboard_dir). Needs the `tensorboard` package, an extra:
pip install 'distbelief-mpi[tensorboard]'; config.check_values refuses the key without it.

Tags: train/loss, train/accuracy, train/examples_per_s, test/loss, test/accuracy,
summary/examples_per_s, summary/staleness_mean, summary/staleness_max.
"""

import importlib.util
import time
import tomllib
from pathlib import Path

PACKAGE = "tensorboard"
INSTALL = "pip install 'distbelief-mpi[tensorboard]'"
# metrics.jsonl kind -> {record key: tag}
RECORD_TAGS = {
    "train": {"train_loss": "train/loss", "train_accuracy": "train/accuracy", "examples_per_s": "train/examples_per_s"},
    "eval": {"test_loss": "test/loss", "test_accuracy": "test/accuracy"},
}
SUMMARY_TAGS = {
    "examples_per_s": "summary/examples_per_s",
    "test_accuracy": "summary/test_accuracy",
    "staleness_mean": "summary/staleness_mean",
    "staleness_max": "summary/staleness_max",
}


def available() -> bool:
    return importlib.util.find_spec(PACKAGE) is not None


def directory_for(run_dir: Path) -> Path | None:
    """Where this run's events go, from its resolved spec RUN_DIR/job.toml; None: no sink."""
    try:
        run = tomllib.loads((Path(run_dir) / "job.toml").read_text()).get("run", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None  # a run directory made by hand (tests): nothing asked for
    if not run.get("tensorboard"):
        return None
    return Path(run.get("tensorboard_dir") or Path(run_dir) / "tensorboard")


class TensorBoardSink:
    """Scalars into one new event file in `directory` (TensorBoard reads every file there)."""

    def __init__(self, directory: Path):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        Path(directory).mkdir(parents=True, exist_ok=True)
        self.writer = EventFileWriter(str(directory))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        tagged = [Summary.Value(tag=tag, simple_value=float(value)) for tag, value in values.items()]
        self.writer.add_event(Event(wall_time=time.time(), step=int(step), summary=Summary(value=tagged)))

    def record(self, record: dict) -> None:
        """One metrics.jsonl record (its kind picks the tags; other kinds are not scalars here)."""
        self.tagged(record.get("step", 0), record, RECORD_TAGS.get(record.get("kind", ""), {}))

    def tagged(self, step: int, figures: dict, tags: dict[str, str]) -> None:
        values = {tag: figures[key] for key, tag in tags.items() if isinstance(figures.get(key), (int, float))}
        if values:
            self.scalars(step, values)

    def close(self) -> None:
        self.writer.close()


def write_summary_scalars(run_dir: Path, summary: dict) -> None:
    """The end-of-run figures (SUMMARY_TAGS) at the final step, when the run asked for a sink."""
    directory = directory_for(run_dir)
    if directory is None:
        return
    # The lead's step, the x axis of the other scalars (Downpour's "steps" sums every replica's).
    lead_steps = (summary.get("replica_steps") or [None])[0]
    sink = TensorBoardSink(directory)
    try:
        sink.tagged(summary.get("steps", 0) if lead_steps is None else lead_steps, summary, SUMMARY_TAGS)
    finally:
        sink.close()
