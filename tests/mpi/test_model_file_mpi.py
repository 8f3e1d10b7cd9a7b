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


def test_predict_under_mpiexec_on_two_ranks_refuses_and_writes_nothing(tmp_path, digits_h5):
    """Model-parallel prediction is not implemented: two ranks would each predict everything."""
    sets = ["--set", f"data.path={digits_h5}", "--set", "run.steps=20", "--run-dir", str(tmp_path / "run")]
    trained = run_mpi(1, ["distbelief", "train", str(REPO / "jobs" / "digits_mlp.toml"), *sets], tmp_path)
    assert_all_ranks(trained, 1)
    out = tmp_path / "p.npy"
    args = ["distbelief", "predict", str(tmp_path / "run"), "--input", f"{digits_h5}:/test/x", "--output", str(out)]
    refused = run_mpi(2, args, tmp_path / "two", timeout=120)
    assert_all_ranks(refused, 2, exit_code=2)
    assert "predict runs on one process, but PMI_SIZE=2" in refused.stderr and not out.exists()
    assert_all_ranks(run_mpi(1, args, tmp_path / "one", timeout=120), 1)
    assert np.load(out).shape == (359, 10)
