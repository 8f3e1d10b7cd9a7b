"""PURE (file reads only): a run directory's summary.json and metrics.jsonl as plain series.

A run directory (see runtime/rundir.py) holds `summary.json` (written when the run ends) and
`metrics.jsonl` (appended by the lead replica while it trains). A resumed run appends to
the same metrics file and its clock restarts from 0; `load_run` stitches the invocations
together on one wall-time axis (see `_stitch`).
"""

import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserInputError


@dataclass
class Series:
    """One kind of metrics line of one run, in file order, on the stitched time axis."""

    time_s: list[float] = field(default_factory=list)  # seconds since the run first started
    step: list[int] = field(default_factory=list)
    examples: list[float] = field(default_factory=list)  # examples all replicas processed (see load_run)
    value: list[float] = field(default_factory=list)  # train_loss or test_accuracy


@dataclass
class Run:
    """What the report needs of one run directory."""

    path: Path
    name: str  # unique among the runs of one report (set by `name_runs`)
    summary: dict  # {} when the run has no summary.json (it did not finish)
    job: dict  # the parsed job.toml, {} when absent
    train_loss: Series
    test_accuracy: Series
    restarts: list[float]  # stitched times at which a resumed invocation began
    examples_scale: float  # lead replica's examples -> all replicas' (1.0 for one replica)
    notes: list[str] = field(default_factory=list)

    @property
    def algorithm(self) -> str:
        return self.summary.get("algorithm") or self.job.get("optimizer", {}).get("algorithm") or "?"

    @property
    def server_rule(self) -> str | None:
        if self.algorithm != "downpour":
            return None
        return self.summary.get("server_rule") or self.job.get("optimizer", {}).get("server_rule")

    @property
    def n_replicas(self) -> int | None:
        return self.summary.get("n_replicas") or self.job.get("topology", {}).get("replicas")

    @property
    def n_shards(self) -> int | None:
        value = self.summary.get("n_shards")
        return value if value is not None else self.job.get("topology", {}).get("shards")

    @property
    def label(self) -> str:
        """Legend text: run name, algorithm (and server rule), shards x replicas."""
        algo = self.algorithm + (f"/{self.server_rule}" if self.server_rule else "")
        replicas = self.n_replicas
        if self.algorithm in ("downpour", "sandblaster"):
            return f"{self.name} ({algo}, {self.n_shards} shards x {replicas} replicas)"
        return f"{self.name} ({algo}, {replicas or 1} replica{'' if replicas in (None, 1) else 's'})"


def load_run(path) -> Run:
    """Read one run directory. Raises UserInputError (naming the file, and the line for
    metrics) when the directory is missing, holds neither summary.json nor metrics.jsonl,
    or a file cannot be parsed."""
    path = Path(path)
    if not path.is_dir():
        raise UserInputError(f"{path}: no such run directory")
    summary_path, metrics_path = path / "summary.json", path / "metrics.jsonl"
    if not summary_path.is_file() and not metrics_path.is_file():
        raise UserInputError(f"{path}: not a run directory (holds neither summary.json nor metrics.jsonl)")
    notes = []
    summary = _read_summary(summary_path) if summary_path.is_file() else {}
    if not summary:
        notes.append("no summary.json: the run did not finish (or is still running)")
    job = _read_job(path / "job.toml")
    records = _read_metrics(metrics_path) if metrics_path.is_file() else []
    if not records:
        notes.append("no metrics lines")
    records, restarts = _stitch(records)

    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    # Downpour: metrics come from the lead replica alone, so its `examples` count one replica's
    # share. Scale them so the last train line matches summary.examples_seen (all replicas).
    # One replica: its count is the total already.
    # A run still in progress has no summary yet: its job spec says how many replicas.
    n_replicas = summary.get("n_replicas") or (
        job.get("topology", {}).get("replicas", 1) if job.get("optimizer", {}).get("algorithm") == "downpour" else 1
    )
    scale = 1.0
    last_examples = train[-1].get("examples") if train else None
    if n_replicas > 1:
        scale = float(n_replicas)
        if summary.get("examples_seen") and last_examples:
            scale = summary["examples_seen"] / last_examples
    train_series = Series(
        [r["time_s"] for r in train],
        [r.get("step", 0) for r in train],
        [r.get("examples", math.nan) * scale for r in train],
        [r.get("train_loss", math.nan) for r in train],
    )
    # Eval lines carry a step but no example count: read it off the train lines by step.
    steps_seen = _examples_by_step(train)
    eval_series = Series(
        [r["time_s"] for r in evals],
        [r.get("step", 0) for r in evals],
        [steps_seen(r.get("step", 0)) * scale for r in evals],
        [r.get("test_accuracy", math.nan) for r in evals],
    )
    if restarts:
        notes.append(f"resumed {len(restarts)} time(s): wall time offset at each restart")
    return Run(path, path.resolve().name or str(path), summary, job, train_series, eval_series, restarts, scale, notes)


def name_runs(runs: list[Run]) -> None:
    """Give each run a short unique name: its directory name, with parent folders added
    when two runs share one."""
    depth = 1
    while True:
        names = ["/".join(run.path.resolve().parts[-depth:]) for run in runs]
        if len(set(names)) == len(names) or depth > 8:
            break
        depth += 1
    for run, name in zip(runs, names):
        run.name = name


def _read_summary(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _read_job(path: Path) -> dict:
    """job.toml only fills in labels for a run without summary.json; a bad one is ignored."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def _read_metrics(path: Path) -> list[dict]:
    """Train and eval lines in file order; other kinds are skipped, blank lines too."""
    records = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path}: cannot read: {exc}") from None
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()  # a line still being written (a run in progress, or killed mid-write)
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserInputError(
                f"{path}: line {lineno}: not valid JSON ({exc.msg}, column {exc.colno}); fix or delete that line"
            ) from None
        if not isinstance(record, dict):
            raise UserInputError(f"{path}: line {lineno}: expected a JSON object")
        if record.get("kind") not in ("train", "eval"):
            continue
        time_s = record.get("time_s")
        if not isinstance(time_s, (int, float)) or isinstance(time_s, bool):
            raise UserInputError(f"{path}: line {lineno}: a {record['kind']} line without a numeric time_s")
        records.append(record)
    return records


def _stitch(records: list[dict]) -> tuple[list[dict], list[float]]:
    """One time axis across resumed invocations. Each invocation's clock starts at 0, so a
    line whose time_s (or step) is lower than the line before starts a new invocation; its
    times are offset by the last time of the previous one. Returns copies of the records
    with stitched time_s, and the stitched times at which each restart happened."""
    out, restarts = [], []
    offset, last_time, last_step = 0.0, -math.inf, -math.inf
    for record in records:
        step = record.get("step", last_step)
        if record["time_s"] < last_time or (isinstance(step, (int, float)) and step < last_step):
            offset += last_time
            restarts.append(offset)
        last_time, last_step = record["time_s"], step
        out.append({**record, "time_s": record["time_s"] + offset})
    return out, restarts


def _examples_by_step(train: list[dict]):
    """step -> examples, linear between train lines (through (0, 0)), for eval lines."""
    points = sorted({(r.get("step", 0), r["examples"]) for r in train if "examples" in r})
    if not points:
        return lambda step: math.nan
    steps = [0] + [p[0] for p in points]
    examples = [0] + [p[1] for p in points]

    def lookup(step):
        if step >= steps[-1]:  # past the last train line: extrapolate at the last rate
            rate = examples[-1] / steps[-1] if steps[-1] else math.nan
            return examples[-1] + (step - steps[-1]) * rate
        for i in range(1, len(steps)):
            if step <= steps[i]:
                span = steps[i] - steps[i - 1]
                frac = (step - steps[i - 1]) / span if span else 1.0
                return examples[i - 1] + frac * (examples[i] - examples[i - 1])
        return examples[-1]

    return lookup
