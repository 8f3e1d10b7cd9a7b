"""A user's layer types, imported with `[model] plugins`, train under mpiexec: Downpour with one
parameter shard and two replicas (3 ranks), every rank importing the plugin module itself."""

import json

import h5py
import numpy as np

from tests.mpi.runner import assert_all_ranks, run_mpi

JOB = """
[topology]
shards = 1
replicas = 2

[model]
plugins = ["tests.plugins.user_layers"]
layers = [
  { type = "scale", init = 0.5 },
  { type = "nobias_dense", units = 32, activation = "relu" },
]

[optimizer]
algorithm = "downpour"
learning_rate = 0.1
batch_size = 32
server_learning_rate = 0.05

[data]
path = "{data}"

[run]
steps = 150
seed = 0
"""


def test_a_plugin_layer_trains_with_downpour(tmp_path, digits_h5):
    job = tmp_path / "job.toml"
    job.write_text(JOB.replace("{data}", str(digits_h5)))
    run = run_mpi(3, ["distbelief", "train", str(job), "--run-dir", str(tmp_path / "run")], tmp_path, timeout=240)
    assert_all_ranks(run, 3, exit_code=0)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.5, summary  # 10 classes: chance is 0.1; 8 runs gave 0.79 to 0.90
    assert 'plugins = [\n  "tests.plugins.user_layers",\n]' in (tmp_path / "run" / "job.toml").read_text()
    with h5py.File(tmp_path / "run" / "params.h5") as f:
        scale = f["params"][: 2 * 64]  # the scale layer's s (1, 8, 8) then t, first in the vector
    assert not np.allclose(scale[:64], 0.5) and not np.allclose(scale[64:], 0.0)  # its gradient reached the shard
