"""RUN_DIR/model.h5 from the runs whose lead never holds the whole vector: Downpour with
partitioned replicas and Sandblaster, under real mpiexec. The model file is streamed from
params.h5 (canonical order): its tensors concatenate to params.h5, and predicting the test
split reproduces the run's own test accuracy."""

import json

import h5py
import numpy as np
import pytest

from distbelief_mpi import load_model
from tests.mpi.runner import REPO, assert_all_ranks, run_mpi

RUNS = {
    # 2 shards + 1 replica of 2 partitions (local layer rows split between them)
    "downpour_partitioned": (4, "digits_lc_partitioned.toml", ["topology.replicas=1", "run.steps=60"]),
    # coordinator + 2 shards + 2 replicas
    "sandblaster": (5, "digits_sandblaster.toml", ["topology.replicas=2", "run.steps=5"]),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_model_file_matches_params_and_summary(tmp_path, digits_h5, name):
    ranks, job, overrides = RUNS[name]
    sets = [arg for key in [f"data.path={digits_h5}", "run.eval_every=0", *overrides] for arg in ("--set", key)]
    target = ["distbelief", "train", str(REPO / "jobs" / job), *sets, "--run-dir", str(tmp_path / "run")]
    assert_all_ranks(run_mpi(ranks, target, tmp_path, timeout=300), ranks)
    run = tmp_path / "run"
    model = load_model(run)
    with h5py.File(run / "params.h5", "r") as handle:
        flat = handle["params"][...]
        step = int(handle.attrs["step"])
    assert np.array_equal(np.concatenate([a.ravel() for a in model.params().values()]), flat)
    assert model.step == step > 0
    with h5py.File(digits_h5, "r") as handle:
        x_raw, y = handle["test/x"][...], handle["test/y"][...]
    summary = json.loads((run / "summary.json").read_text())
    assert np.mean(model.predict(x_raw).argmax(axis=1) == y) == pytest.approx(summary["test_accuracy"], abs=1e-12)


def test_predict_model_parallel_equals_one_process(tmp_path, digits_h5):
    """mpiexec -n P distbelief predict: each rank one partition of the model (its own block of
    the weights), the same probabilities as one process within float32 rounding."""
    ranks, job, overrides = RUNS["downpour_partitioned"]
    sets = [arg for key in [f"data.path={digits_h5}", "run.eval_every=0", *overrides] for arg in ("--set", key)]
    target = ["distbelief", "train", str(REPO / "jobs" / job), *sets, "--run-dir", str(tmp_path / "run")]
    assert_all_ranks(run_mpi(ranks, target, tmp_path / "train", timeout=300), ranks)
    outputs = {}
    for parts in (1, 2, 3):
        out = tmp_path / f"p{parts}.npy"
        args = ["distbelief", "predict", str(tmp_path / "run"), "--input", f"{digits_h5}:/test/x", "--output", str(out)]
        done = run_mpi(parts, [*args, "--top-k", "2"], tmp_path / f"predict{parts}", timeout=120)
        assert_all_ranks(done, parts)
        assert (f"({parts} partitions)" in done.stdout) == (parts > 1), done.stdout
        outputs[parts] = np.load(out), np.load(tmp_path / f"p{parts}.topk.npy")
    for parts in (2, 3):
        assert np.abs(outputs[parts][0] - outputs[1][0]).max() < 1e-5
        assert np.array_equal(outputs[parts][1], outputs[1][1])
    with h5py.File(digits_h5, "r") as handle:
        y = handle["test/y"][...]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert np.mean(outputs[2][0].argmax(axis=1) == y) == pytest.approx(summary["test_accuracy"], abs=1e-12)


@pytest.mark.parametrize("case", ["nan", "too_many_ranks"])
def test_predict_model_parallel_bad_input_stops_every_rank_with_exit_2(tmp_path, digits_h5, case):
    ranks, job, overrides = RUNS["downpour_partitioned"]
    sets = [arg for key in [f"data.path={digits_h5}", "run.steps=5", "run.eval_every=0"] for arg in ("--set", key)]
    sets += ["--set", "topology.replicas=1"]
    target = ["distbelief", "train", str(REPO / "jobs" / job), *sets, "--run-dir", str(tmp_path / "run")]
    assert_all_ranks(run_mpi(ranks, target, tmp_path / "train", timeout=300), ranks)
    x = np.zeros((5, 1, 8, 8), np.float32)
    x[3, 0, 2, 2] = np.nan if case == "nan" else 0.0
    np.save(tmp_path / "x.npy", x)
    parts, message = (2, "x.npy: row 3 holds NaN or Inf") if case == "nan" else (7, "cannot predict on 7 ranks")
    out = tmp_path / "p.npy"
    args = ["distbelief", "predict", str(tmp_path / "run"), "--input", str(tmp_path / "x.npy"), "--output", str(out)]
    done = run_mpi(parts, args, tmp_path / "predict", timeout=120)
    assert_all_ranks(done, parts, exit_code=2)
    assert message in done.stderr and not out.exists()
