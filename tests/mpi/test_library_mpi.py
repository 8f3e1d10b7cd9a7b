"""The Python API's train(spec, run_dir) (distbelief_mpi/library.py): in-process for one rank,
twice in the same process, and as a library call on every rank under mpiexec."""

import subprocess
import sys

from tests.mpi.runner import REPO, assert_all_ranks, run_mpi

IN_PROCESS = """
import sys
from distbelief_mpi import JobSpec, load_model, train
from distbelief_mpi.config import Data, Model, Optimizer, Run
import h5py
from distbelief_mpi.library import TrainingFailed
from distbelief_mpi.model.spec import LayerSpec

data, out = sys.argv[1], sys.argv[2]
spec = JobSpec(
    model=Model(layers=(LayerSpec("dense", units=32, activation="relu"),)),
    optimizer=Optimizer(algorithm="sgd", learning_rate=0.1, batch_size=32),
    data=Data(path=data),
    run=Run(steps=300, progress_seconds=0),
)
first = train(spec, out + "/a")
second = train(spec, out + "/b")  # a second run in the same process
assert first["test_accuracy"] == second["test_accuracy"] >= 0.85, (first, second)
with h5py.File(data, "r") as f:  # raw units, as predict takes them
    x, y = f["test/x"][...], f["test/y"][...]
assert (load_model(out + "/a").predict(x).argmax(1) == y).mean() == first["test_accuracy"]
bad = JobSpec(optimizer=Optimizer(algorithm="sgd", learning_rate=-1.0), data=Data(path=data), run=Run(steps=1))
try:
    train(bad, out + "/c")
except TrainingFailed as exc:
    assert exc.exit_code == 2, exc
else:
    raise AssertionError("a bad spec trained")
print("ok", first["test_accuracy"])
"""


def test_train_in_process_twice_then_a_bad_spec_raises(tmp_path, digits_h5):
    done = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, str(digits_h5), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "optimizer.learning_rate: must be > 0" in done.stderr


def test_train_as_a_library_call_on_every_rank(tmp_path, digits_h5):
    run = run_mpi(3, ["program", "library_train", str(digits_h5), str(tmp_path / "run")], tmp_path, timeout=180)
    assert_all_ranks(run, 3)
    for record in run.ranks.values():
        # 400 async steps on digits: 0.67-0.9 seen; chance is 0.1.
        assert record["data"]["world_size"] == 3 and record["data"]["test_accuracy"] >= 0.5, record
