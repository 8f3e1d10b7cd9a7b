"""Waiting on what a batch job writes while it runs: its output file and its run directory."""

import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def batch_env(cluster, runs: Path, **settings: str) -> dict[str, str]:
    """The environment to sbatch the repository's scripts with: run directories under `runs`,
    this interpreter's environment (the scripts' default is the repository's .venv), and
    settings (the scripts' variables: LAUNCH, EXTRA_ARGS, ...)."""
    env = {"RUNS": str(runs), **settings}
    if Path(sys.prefix) != REPO / ".venv":
        env["VENV"] = sys.prefix if sys.prefix != sys.base_prefix else "none"
        if env["VENV"] == "none":
            env["PATH"] = f"{Path(sys.executable).parent}:{cluster.env.get('PATH', '')}"
    return env


def wait_until_training(run_dir: Path, timeout: float = 60) -> None:
    """Until the run's first training line (metrics.jsonl): the ranks are past their start-up."""
    _wait(lambda: '"kind": "train"' in _text(run_dir / "metrics.jsonl"), timeout, f"{run_dir}: no training line")


def wait_for_output(log: Path, text: str, timeout: float, explain: Callable[[], str] = lambda: "") -> None:
    """Until the job's output file holds `text`; on timeout the error says what explain() returns."""
    _wait(lambda: text in _text(log), timeout, f"no {text!r} in {log}", explain)


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _wait(condition: Callable[[], bool], timeout: float, failure: str, explain: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{failure} within {timeout} s\n{explain()}")
        time.sleep(0.3)
