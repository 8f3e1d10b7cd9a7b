"""RUN_DIR/model.h5, load_model and `distbelief predict` on a real (short) SGD run.

The run's model has every kind of tensor layout: locally connected (W (P, K, F), b (P, F)),
max pooling (no tensors), dense and the softmax output (W (D, U), b (U,)).
"""

import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from distbelief_mpi.cli import main
from tests.mpi.runner import REPO

LAYERS = (
    'model.layers=[{type="local", filters=4, patch=3, stride=1}, {type="maxpool", size=2}, '
    '{type="dense", units=16, activation="tanh"}]'
)


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits_h5):
    """A run trained where data.path is relative (digits.h5 in the working directory)."""
    where = tmp_path_factory.mktemp("train")
    shutil.copy(digits_h5, where / "digits.h5")
    job = REPO / "jobs" / "digits_mlp.toml"
    args = ["train", str(job), "--set", "data.path=digits.h5", "--set", LAYERS, "--set", "run.steps=200"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(where)
        assert main([*args, "--set", "run.progress_seconds=0", "--run-dir", "run"]) == 0
    return where / "run"


def test_model_file_tensors_concatenate_to_params_h5(run):
    from distbelief_mpi import load_model

    model = load_model(run)
    named = model.params()
    assert list(named) == ["layers.0.W", "layers.0.b", "layers.2.W", "layers.2.b", "layers.3.W", "layers.3.b"]
    assert named["layers.0.W"].shape == (36, 9, 4) and named["layers.0.b"].shape == (36, 4)  # 6x6 positions
    assert named["layers.2.W"].shape == (36, 16) and named["layers.3.W"].shape == (16, 10)
    with h5py.File(run / "params.h5", "r") as handle:
        flat = handle["params"][...]
        step = int(handle.attrs["step"])
    assert np.array_equal(np.concatenate([a.ravel() for a in named.values()]), flat)
    assert model.input_shape == (1, 8, 8) and model.n_classes == 10 and model.step == step == 200
    assert [spec.type for spec in model.layers] == ["local", "maxpool", "dense"]


def test_model_file_records_the_dataset_and_scale(run, digits_h5):
    with h5py.File(run / "model.h5", "r") as handle:
        attrs = dict(handle.attrs)
        assert handle["layers/1"].attrs["type"] == "maxpool" and len(handle["layers/1"]) == 0
    with h5py.File(digits_h5, "r") as data:
        assert attrs["x_scale"] == data.attrs["x_scale"] and attrs["dataset_name"] == data.attrs["name"]
    assert attrs["format"] == "distbelief-model" and attrs["format_version"] == 1
    assert attrs["dataset_path"] == str(run.parent / "digits.h5")
    assert json.loads(attrs["layers"])[0] == {
        "type": "local",
        "filters": 4,
        "patch": 3,
        "stride": 1,
        "activation": "relu",
    }
    assert not list(run.glob(".*tmp*"))  # the temporary was renamed


def test_predict_on_the_test_split_equals_the_summary_accuracy(run, tmp_path, capsys):
    data = run.parent / "digits.h5"
    out = tmp_path / "p.npy"
    assert main(["predict", str(run), "--input", f"{data}:/test/y", "--output", str(out)]) == 2  # (n,) labels
    assert not out.exists()
    code = main(["predict", str(run / "model.h5"), "--input", f"{data}:/test/x", "--output", str(out), "--top-k", "3"])
    assert code == 0
    probs, top = np.load(out), np.load(tmp_path / "p.topk.npy")
    with h5py.File(data, "r") as handle:
        x_raw, y = handle["test/x"][...], handle["test/y"][...]
    summary = json.loads((run / "summary.json").read_text())
    assert probs.shape == (len(y), 10) and probs.dtype == np.float32 and top.shape == (len(y), 3)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.mean(probs.argmax(axis=1) == y) == summary["test_accuracy"]
    assert np.array_equal(top[:, 0], probs.argmax(axis=1))
    assert np.all(np.take_along_axis(probs, top, 1)[:, :-1] >= np.take_along_axis(probs, top, 1)[:, 1:])
    from distbelief_mpi import load_model

    np.save(tmp_path / "x.npy", x_raw)  # the same raw uint8 rows through a .npy
    assert main(["predict", str(run), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "q.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "q.npy"), probs)
    assert np.allclose(load_model(run).predict(x_raw, batch_size=7), probs, atol=1e-6)  # BLAS blocks may differ


BAD_INPUTS = {
    "missing": (None, "input file not found"),
    "nan": (np.full((3, 1, 8, 8), np.nan, np.float32), "row 0 holds NaN or Inf"),
    "inf": (np.concatenate([np.zeros((2, 1, 8, 8)), np.full((1, 1, 8, 8), np.inf)]), "row 2 holds NaN or Inf"),
    "strings": (np.array(["a"] * 128).reshape(2, 1, 8, 8), "holds <U1 values"),
    "complex": (np.zeros((2, 1, 8, 8), np.complex64), "holds complex64 values"),
    "flat": (np.zeros((2, 64), np.float32), "shape (2, 64); the model takes (n, 1, 8, 8)"),
    "empty": (np.zeros((0, 1, 8, 8), np.uint8), "holds no examples"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_naming_the_file_and_writes_nothing(run, tmp_path, capsys, case):
    array, message = BAD_INPUTS[case]
    path = tmp_path / f"{case}.npy"
    if array is not None:
        np.save(path, array)
    out = tmp_path / "p.npy"
    assert main(["predict", str(run), "--input", str(path), "--output", str(out), "--top-k", "2"]) == 2
    assert f"error: {path}: {message}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ([path.name] if array is not None else [])


def test_pickled_npy_and_bad_top_k_exit_2(run, tmp_path, capsys):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["predict", str(run), "--input", str(tmp_path / "obj.npy"), "--output", str(tmp_path / "p.npy")]) == 2
    assert "not a readable .npy array" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.uint8))
    args = ["predict", str(run), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "p.npy")]
    assert main([*args, "--top-k", "11"]) == 2
    assert "--top-k 11: must be in [1, 10]" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "--input", "x.npy", "--output", "p.npy"]) == 2
    assert f"{tmp_path}: no model.h5" in capsys.readouterr().err


def test_eval_from_another_directory(run, tmp_path, monkeypatch, capsys):
    """job.toml's data.path was relative ("digits.h5") when training: it is kept absolute."""
    assert f'path = "{run.parent / "digits.h5"}"' in (run / "job.toml").read_text()
    monkeypatch.chdir(tmp_path)
    accuracy = json.loads((run / "summary.json").read_text())["test_accuracy"]
    assert main(["eval", str(run)]) == 0
    assert main(["eval", str(run / "model.h5")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(f"test accuracy {accuracy:.4f} on 359 examples" in line for line in lines)


def test_importing_the_package_stays_light():
    light = "import sys, distbelief_mpi; print('numpy' in sys.modules, 'h5py' in sys.modules)"
    code = light.replace("; print", "; f = distbelief_mpi.load_model; print")  # h5py waits for a model file
    assert subprocess.run([sys.executable, "-c", light], capture_output=True, text=True).stdout.split() == ["False"] * 2
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == [
        "True",
        "False",
    ]


def _damaged(run, tmp_path, change) -> str:
    copy = tmp_path / "model.h5"
    shutil.copy(run / "model.h5", copy)
    with h5py.File(copy, "r+") as handle:
        change(handle)
    return str(copy)


DAMAGE = {
    "not_a_model": (lambda h: h.attrs.__setitem__("format", "other"), "not a distbelief model file"),
    "newer_format": (lambda h: h.attrs.__setitem__("format_version", 2), "model file format_version 2"),
    "no_tensor": (lambda h: h.__delitem__("layers/3/W"), "/layers/3/W should be (16, 10) float32, found nothing"),
    "bad_layers": (lambda h: h.attrs.__setitem__("layers", '[{"type": "conv"}]'), "'conv' is not a layer type"),
    "nan_weights": (lambda h: h["layers/0/b"].__setitem__((0, 0), np.nan), "the weights hold NaN or Inf"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_model_file_exits_2_naming_it(run, tmp_path, capsys, case):
    change, message = DAMAGE[case]
    path = _damaged(run, tmp_path, change)
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.uint8))
    assert main(["predict", path, "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "p.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and message in err, err
    assert not (tmp_path / "p.npy").exists()


def test_a_failed_write_leaves_the_old_model_file_and_no_temporary(run, tmp_path):
    """A params.h5 that does not fit the model fails mid-stream: model.h5 stays as it was."""
    from distbelief_mpi import load_model
    from distbelief_mpi.checkpoint.model_file import write_model_file
    from distbelief_mpi.checkpoint.params_file import save_params
    from distbelief_mpi.errors import CheckpointError

    shutil.copy(run / "model.h5", tmp_path / "model.h5")
    before = (tmp_path / "model.h5").read_bytes()
    model = load_model(tmp_path)
    save_params(tmp_path / "short.h5", np.zeros(model.network.n_params - 1, np.float32), {"step": 1})
    with pytest.raises(CheckpointError, match="short.h5: /params has shape"):
        write_model_file(tmp_path / "model.h5", model.network, model.layers, tmp_path / "short.h5", {"step": 1})
    assert (tmp_path / "model.h5").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.h5", "short.h5"]


def test_a_plugin_layer_model_loads_its_plugin_in_a_fresh_process(tmp_path, digits_h5, capsys):
    """The model file names [model] plugins; load_model imports them before reading the layers."""
    layers = 'model.layers=[{type="scale", init=0.5}, {type="dense", units=16}]'
    plugins = 'model.plugins=["tests.plugins.user_layers"]'
    job = str(REPO / "jobs" / "digits_mlp.toml")
    sets = ["--set", f"data.path={digits_h5}", "--set", layers, "--set", plugins, "--set", "run.steps=30"]
    assert main(["train", job, *sets, "--set", "run.progress_seconds=0", "--run-dir", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    code = (
        "import sys, h5py, numpy as np; from distbelief_mpi import load_model; "
        f"m = load_model({str(tmp_path / 'run')!r}); f = h5py.File({str(digits_h5)!r}); "
        "print(sorted(m.params())[:2], np.mean(m.predict(f['test/x'][...]).argmax(1) == f['test/y'][...]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.stdout.split("]")[0] == "['layers.0.s', 'layers.0.t'", done.stderr
    assert float(done.stdout.split("]")[1]) == summary["test_accuracy"]
    with h5py.File(tmp_path / "run" / "model.h5", "r+") as handle:
        handle.attrs["plugins"] = '["no_such_layers_module"]'
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.uint8))
    args = ["predict", str(tmp_path / "run"), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "p.npy")]
    capsys.readouterr()
    assert main(args) == 2
    assert "attribute 'plugins': cannot import 'no_such_layers_module'" in capsys.readouterr().err


def test_predict_prints_progress_between_batches(run, tmp_path, monkeypatch, capsys):
    import distbelief_mpi.predict as predict

    monkeypatch.setattr(predict, "PROGRESS_SECONDS", 0.0)  # a line after every batch but the last
    data = run.parent / "digits.h5"
    args = ["predict", str(run), "--input", f"{data}:/test/x", "--output", str(tmp_path / "p.npy")]
    assert main([*args, "--batch-size", "100"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"predict: {k} / 359 examples" for k in (100, 200, 300)]
    assert main([*args, "--batch-size", "-1"]) == 2


WRITE_BIG = """
import resource, sys
from pathlib import Path
import numpy as np
from distbelief_mpi.checkpoint.model_file import write_model_file
from distbelief_mpi.checkpoint.params_file import params_stream
from distbelief_mpi.model.network import build_network
from distbelief_mpi.model.spec import LayerSpec

specs = [LayerSpec("dense", units=4096, activation="relu"), LayerSpec("dense", units=2048, activation="relu")]
net = build_network(specs, (1, 64, 64), 10)  # 25.2M parameters, 96 MiB
out = Path(sys.argv[1])
with params_stream(out / "params.h5", net.n_params, {"step": 1}) as write:
    for lo in range(0, net.n_params, 1 << 20):
        write(lo, np.full(min(1 << 20, net.n_params - lo), lo, np.float32))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
write_model_file(out / "model.h5", net, specs, out / "params.h5", {"step": 1, "x_scale": 1.0})
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_writing_a_96_mib_model_file_holds_one_chunk_not_the_model(tmp_path):
    """The lead streams model.h5 from params.h5: its peak memory grows by about one 16 MiB chunk."""
    done = subprocess.run([sys.executable, "-c", WRITE_BIG, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 40, f"peak RSS grew {done.stdout} MiB writing a 96 MiB model"
    with h5py.File(tmp_path / "model.h5", "r") as handle:
        # every float is its params.h5 chunk's start: flat index k holds k rounded down to 2^20
        assert handle["layers/0/W"][300, 0] == (300 * 4096 >> 20) << 20
        assert handle["layers/2/b"][-1] == (25_192_457 >> 20) << 20
