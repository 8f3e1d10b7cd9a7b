"""`distbelief export --format npz | torch | onnx`: each format's outputs equal load_model's
predict within 1e-5, on the digits test split (a trained model with every built-in layer type and
activation) and on a random 3-channel, non-square image model with strides that differ from
window sizes. torch (with safetensors) and onnx (with onnxruntime) are optional: those tests
skip naming the package when it is absent; CI installs them (scripts/env.sh)."""

import importlib.util
import json
import shutil
import sys

import h5py
import numpy as np
import pytest

from distbelief_mpi.checkpoint.model_file import write_model_file
from distbelief_mpi.checkpoint.params_file import save_params
from distbelief_mpi.cli import main
from distbelief_mpi.kernels import reference as ref
from distbelief_mpi.model.network import build_network
from distbelief_mpi.model.spec import LayerSpec, make_spec
from tests.mpi.runner import REPO

TOLERANCE = 1e-5
EVERY_LAYER = (
    'model.layers=[{type="lcn", size=3}, {type="local", filters=4, patch=3, stride=1, activation="relu"}, '
    '{type="l2pool", size=2, stride=1}, {type="lcn", size=3}, '
    '{type="local", filters=3, patch=2, stride=1, activation="tanh"}, {type="maxpool", size=2}, '
    '{type="dense", units=16, activation="sigmoid"}, {type="dense", units=12, activation="none"}]'
)
IMAGE_SPECS = [
    LayerSpec("lcn", size=5),
    LayerSpec("local", filters=4, patch=3, stride=2, activation="relu"),
    LayerSpec("l2pool", size=2, stride=1),
    LayerSpec("lcn", size=3),
    LayerSpec("maxpool", size=2, stride=1),
    LayerSpec("local", filters=2, patch=2, stride=1, activation="sigmoid"),
    LayerSpec("dense", units=7, activation="tanh"),
]


def needs(*modules: str):
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed: pip install '.[export]'")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, digits_h5):
    """A short SGD run on digits whose model holds every built-in layer type and activation."""
    where = tmp_path_factory.mktemp("export")
    job = str(REPO / "jobs" / "digits_mlp.toml")
    sets = ["--set", f"data.path={digits_h5}", "--set", EVERY_LAYER, "--set", "run.steps=150"]
    assert main(["train", job, *sets, "--set", "run.progress_seconds=0", "--run-dir", str(where / "run")]) == 0
    with h5py.File(digits_h5, "r") as data:
        x_test = data["test/x"][...]
    return where / "run", x_test


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    """model.h5 of a random (3, 11, 9)-input model, x_scale 1/255; raw uint8 inputs."""
    where = tmp_path_factory.mktemp("image")
    network = build_network(IMAGE_SPECS, (3, 11, 9), 5)
    save_params(where / "params.h5", network.init_params(seed=3), {"step": 1})
    write_model_file(where / "model.h5", network, IMAGE_SPECS, where / "params.h5", {"step": 1, "x_scale": 1 / 255})
    x = np.random.default_rng(0).integers(0, 256, size=(40, 3, 11, 9), dtype=np.uint8)
    return where / "model.h5", x


@pytest.fixture(params=["digits", "image"])
def case(request, digits_run, image_model):
    """(model file, raw inputs, load_model(...).predict of them)."""
    from distbelief_mpi import load_model

    target, x = digits_run if request.param == "digits" else image_model
    return target, x, load_model(target).predict(x)


def export(target, fmt: str, output) -> None:
    assert main(["export", str(target), "--format", fmt, "--output", str(output)]) == 0


def npz_forward(npz, x: np.ndarray) -> np.ndarray:
    """Probabilities computed from the .npz alone with the NumPy reference kernels: proves the
    config says all a reader needs."""
    config = json.loads(str(npz["config.json"]))
    h = x.astype(np.float32) * np.float32(config["x_scale"])
    for index, entry in enumerate(config["layers"]):
        kind, w, b = entry["type"], npz.get(f"layers.{index}.W"), npz.get(f"layers.{index}.b")
        if kind in ("dense", "output"):
            h = ref.activate(h.reshape(len(h), -1) @ w + b, entry["activation"])
        elif kind == "local":
            h = ref.local_forward(h, w, b, entry["stride"], entry["patch"], entry["activation"])
        elif kind == "maxpool":
            h = ref.maxpool_forward(h, entry["size"], entry["stride"])
        elif kind == "l2pool":
            h = ref.l2pool_forward(h, entry["size"], entry["stride"])
        else:
            h = ref.lcn_forward(h, entry["size"])[0]
    z = np.exp(h - h.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def test_npz_holds_the_named_tensors_and_a_config_that_suffices(case, tmp_path):
    from distbelief_mpi import load_model

    target, x, ours = case
    export(target, "npz", tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as npz:
        params = load_model(target).params()
        assert sorted(npz.files) == sorted([*params, "config.json"])
        assert all(np.array_equal(npz[name], value) for name, value in params.items())
        assert np.abs(npz_forward(npz, x) - ours).max() < TOLERANCE


@needs("torch", "safetensors")
def test_torch_module_equals_predict(case, tmp_path):
    import torch

    target, x, ours = case
    export(target, "torch", tmp_path / "tm")
    assert sorted(p.name for p in (tmp_path / "tm").iterdir()) == [
        "config.json",
        "distbelief_torch.py",
        "model.safetensors",
    ]
    sys.path.insert(0, str(tmp_path / "tm"))
    try:
        sys.modules.pop("distbelief_torch", None)
        import distbelief_torch

        net = distbelief_torch.load(tmp_path / "tm")
    finally:
        sys.path.remove(str(tmp_path / "tm"))
    with torch.no_grad():
        theirs = net(torch.as_tensor(x)).numpy()
    assert theirs.shape == ours.shape and np.abs(theirs - ours).max() < TOLERANCE


@needs("onnx", "onnxruntime")
def test_onnx_graph_equals_predict(case, tmp_path):
    import onnxruntime

    target, x, ours = case
    export(target, "onnx", tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (theirs,) = session.run(["probabilities"], {"x": x.astype(np.float32)})
    assert theirs.shape == ours.shape and np.abs(theirs - ours).max() < TOLERANCE


def test_default_output_lies_beside_the_model_file(image_model, tmp_path, capsys):
    shutil.copy(image_model[0], tmp_path / "model.h5")
    assert main(["export", str(tmp_path), "--format", "npz"]) == 0
    assert (tmp_path / "model.npz").is_file() and "model.npz: npz export of" in capsys.readouterr().out


def test_a_plugin_layer_is_refused_by_name_and_nothing_is_written(tmp_path, capsys):
    import tests.plugins.user_layers  # noqa: F401  (registers "scale")

    specs = [make_spec("scale", {"init": 1.0}), LayerSpec("dense", units=4, activation="relu")]
    network = build_network(specs, (6,), 3)
    save_params(tmp_path / "params.h5", network.init_params(seed=0), {"step": 1})
    plugins = ("tests.plugins.user_layers",)
    write_model_file(
        tmp_path / "model.h5", network, specs, tmp_path / "params.h5", {"step": 1, "x_scale": 1.0}, plugins
    )
    for fmt in ("npz", "torch", "onnx"):
        capsys.readouterr()
        assert main(["export", str(tmp_path), "--format", fmt, "--output", str(tmp_path / f"out-{fmt}")]) == 2
        err = capsys.readouterr().err
        refused = f"cannot export to {fmt}: layer 0 ('scale') (a plugin layer type declares no export)"
        assert refused in err or (fmt != "npz" and "pip install 'distbelief-mpi[export]'" in err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.h5", "params.h5"]


def test_a_missing_package_names_the_pip_command(image_model, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    assert main(["export", str(image_model[0]), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 2
    assert "--format onnx needs onnx: pip install 'distbelief-mpi[export]'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@needs("safetensors")
def test_torch_refuses_a_folder_holding_other_files(image_model, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["export", str(image_model[0]), "--format", "torch", "--output", str(tmp_path)]) == 2
    assert "holds other files (notes.txt)" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
