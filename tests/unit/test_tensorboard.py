"""run.tensorboard: the lead's figures as TensorBoard scalars, read back with the same package;
without the package, exit 2 at start-up naming the key and the pip command."""

import importlib.util
import json

import pytest

from distbelief_mpi.cli import main
from distbelief_mpi.runtime.rundir import write_summary
from tests.mpi.runner import REPO

JOB = str(REPO / "jobs" / "digits_mlp.toml")
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
needs_tensorboard = pytest.mark.skipif(
    not HAS_TENSORBOARD, reason="tensorboard not installed: pip install 'distbelief-mpi[tensorboard]'"
)


def scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from every event file in `directory`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def train(run_dir, digits_h5, *sets: str) -> int:
    args = ["train", JOB, "--run-dir", str(run_dir), "--no-progress"]
    for value in ("data.path=" + str(digits_h5), "run.epochs=0", "run.steps=300", "run.eval_every=100", *sets):
        args += ["--set", value]
    return main(args)


@needs_tensorboard
def test_an_sgd_run_writes_loss_accuracy_and_rate_scalars(tmp_path, digits_h5):
    assert train(tmp_path / "run", digits_h5, "run.tensorboard=true") == 0
    found = scalars(tmp_path / "run" / "tensorboard")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for tag in ("train/loss", "train/accuracy", "train/examples_per_s"):
        assert found[tag] and found[tag][-1][0] == 300, tag
    assert [step for step, _ in found["test/accuracy"]] == [100, 200, 300]
    assert found["test/accuracy"][-1][1] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert found["summary/examples_per_s"] == [(300, pytest.approx(summary["examples_per_s"], rel=1e-6))]


@needs_tensorboard
def test_a_named_folder_and_downpour_staleness_from_the_summary(tmp_path):
    run_dir, folder = tmp_path / "run", tmp_path / "board"
    run_dir.mkdir()
    (run_dir / "job.toml").write_text(f'[run]\ntensorboard = true\ntensorboard_dir = "{folder}"\n')
    figures = {"steps": 120, "replica_steps": [40, 40, 40], "staleness_mean": 1.5, "staleness_max": 4}
    write_summary(run_dir, figures)
    found = scalars(folder)  # at replica 0's step, the x axis of its metrics lines
    assert found["summary/staleness_mean"] == [(40, 1.5)] and found["summary/staleness_max"] == [(40, 4.0)]
    assert not (run_dir / "tensorboard").exists()


def test_off_by_default_writes_no_events(tmp_path, digits_h5):
    assert train(tmp_path / "run", digits_h5, "run.steps=5") == 0
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_without_the_package_start_up_exits_2_naming_key_and_pip(tmp_path, digits_h5, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert train(tmp_path / "run", digits_h5, "run.tensorboard=true") == 2
    err = capsys.readouterr().err
    assert "run.tensorboard" in err and "pip install 'distbelief-mpi[tensorboard]'" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before training
