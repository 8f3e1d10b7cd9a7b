"""The layer registry: built-in types declare what the old tables said (and their specs keep the
stored form old checkpoints resume from); a user's types, imported with [model] plugins, parse,
build, check against numerical gradients, split when they declare it, and are refused for P > 1
when they do not; a module that does not import is exit 2 naming it."""

import dataclasses
import json
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest

from distbelief_mpi.checkpoint.resume import layout_signature
from distbelief_mpi.config import load_job, parse_job, to_toml
from distbelief_mpi.errors import ConfigError, LayoutError
from distbelief_mpi.model import spec as spec_module
from distbelief_mpi.model.gradcheck import GradientMismatch, check_layer
from distbelief_mpi.model.layers import Layer
from distbelief_mpi.model.network import build_network
from distbelief_mpi.model.partition import plan_partitions
from distbelief_mpi.model.registry import Key, layer_types, register_layer
from distbelief_mpi.model.spec import LayerSpec
from distbelief_mpi.model.warm_up import warm_up_kernels
from tests.mpi.runner import REPO
from tests.unit.test_partitioned import run_partitioned

PLUGIN = "tests.plugins.user_layers"

# What spec.py's tables said before the registry (the job-spec reference is generated from them).
OLD_KEYS = {
    "dense": {"units": (int, None), "activation": (str, "relu")},
    "local": {"filters": (int, None), "patch": (int, None), "stride": (int, 1), "activation": (str, "relu")},
    "maxpool": {"size": (int, None), "stride": (int, 0)},
    "l2pool": {"size": (int, None), "stride": (int, 0)},
    "lcn": {"size": (int, 5)},
}

ALL_BUILTINS = """
[model]
layers = [
  { type = "lcn", size = 3 },
  { type = "local", filters = 4, patch = 3 },
  { type = "maxpool", size = 2 },
  { type = "l2pool", size = 2, stride = 1 },
  { type = "dense", units = 8, activation = "tanh" },
]
[data]
path = "d.h5"
[run]
steps = 1
"""


def _job(text: str, **sections):
    import tomllib

    raw = tomllib.loads(text)
    for name, table in sections.items():
        raw.setdefault(name, {}).update(table)
    return parse_job(raw, "job.toml")


def test_builtin_types_declare_what_the_old_tables_said():
    assert spec_module.LAYER_KEYS == OLD_KEYS
    assert set(layer_types(in_specs_only=False)) >= set(OLD_KEYS) | {"output"}
    assert "output" not in layer_types()  # appended by the network, never named in a spec


def test_builtin_specs_keep_the_stored_form_old_checkpoints_resume_from():
    """layout_signature stores asdict of each spec: it must be the pre-registry form exactly."""
    spec = _job(ALL_BUILTINS)
    assert all(type(layer) is LayerSpec for layer in spec.model.layers)
    layout = types.SimpleNamespace(n_params=10, shard_ranges=[(0, 10)])
    stored = json.loads(json.dumps(layout_signature(spec, layout)))  # as a manifest holds it
    zero = {"units": 0, "filters": 0, "patch": 0, "stride": 0, "size": 0, "activation": "none"}
    assert stored["layers"] == [
        {**zero, "type": "lcn", "size": 3},
        {**zero, "type": "local", "filters": 4, "patch": 3, "stride": 1, "activation": "relu"},
        {**zero, "type": "maxpool", "size": 2},
        {**zero, "type": "l2pool", "size": 2, "stride": 1},
        {**zero, "type": "dense", "units": 8, "activation": "tanh"},
    ]


@pytest.mark.parametrize("index", range(6))
def test_param_shapes_lie_in_block_order(index):
    network = build_network(_job(ALL_BUILTINS).model.layers, (2, 12, 12), 3)
    layer = network.layers[index]
    shapes = layer.param_shapes()
    assert sum(int(np.prod(s)) for s in shapes.values()) == layer.n_params
    if layer.n_params:  # the layer's own view of its block has the same tensors
        views = layer.split(np.zeros(layer.n_params, np.float32))
        assert [v.shape for v in views] == list(shapes.values())


def test_plugin_layers_parse_build_and_write_back(tmp_path):
    spec = _job(
        "[data]\npath = 'd.h5'\n[run]\nsteps = 1\n",
        model={
            "plugins": [PLUGIN],
            "layers": [{"type": "scale", "init": 2}, {"type": "nobias_dense", "units": 5}],
        },
    )
    scale, dense = spec.model.layers
    assert (scale.type, scale.init, type(scale.init)) == ("scale", 2.0, float)
    assert (dense.units, dense.activation) == (5, "relu")
    assert type(dense) is LayerSpec  # every key has a LayerSpec field: the plain form
    (tmp_path / "job.toml").write_text(to_toml(spec))
    assert load_job(tmp_path / "job.toml").model == spec.model  # written back, read again
    stored = json.loads(json.dumps([dataclasses.asdict(layer) for layer in spec.model.layers]))
    assert stored == [dataclasses.asdict(layer) for layer in spec.model.layers]  # a checkpoint resumes
    assert pickle.loads(pickle.dumps(scale)) == scale and hash(scale) == hash(pickle.loads(pickle.dumps(scale)))
    network = build_network(spec.model.layers, (1, 4, 4), 3)
    assert [layer.kind for layer in network.layers] == ["scale", "nobias_dense", "output"]
    assert network.layers[0].param_shapes() == {"s": (1, 4, 4), "t": (1, 4, 4)}
    params = network.init_params(0)
    assert np.all(params[:16] == 2.0) and np.all(params[16:32] == 0.0)
    warm_up_kernels(network.layers)  # NumPy layers have nothing to warm up and do not stop it


def test_plugin_key_problems_are_named():
    with pytest.raises(ConfigError) as err:
        _job(
            "[data]\npath = 'd.h5'\n[run]\nsteps = 1\n",
            model={
                "plugins": [PLUGIN],
                "layers": [{"type": "scale", "init": "big", "shift": 1}, {"type": "nobias_dense"}],
            },
        )
    assert err.value.problems == [
        "model.layers[0].shift: unknown key for a scale layer "
        "(elementwise y = s * x + t, learned s and t of the input's shape: init (starting s))",
        "model.layers[0].init: expected a number, got 'big'",
        "model.layers[1].units: required for a nobias_dense layer",
    ]


def test_plugin_layers_match_numerical_gradients():
    from tests.plugins.user_layers import NoBiasDense, Scale

    assert check_layer(Scale((2, 3, 4), 0.5, np.float64)) < 1e-7
    for activation in ("relu", "tanh", "sigmoid", "none"):
        assert check_layer(NoBiasDense((2, 3), 4, activation, np.float64)) < 1e-7


def test_gradcheck_catches_a_wrong_backward():
    from tests.plugins.user_layers import Scale

    class Twice(Scale):  # dx off by a factor of 2
        def backward(self, params_view, x, dy, grad_view, need_dx):
            return 2 * super().backward(params_view, x, dy, grad_view, need_dx)

    with pytest.raises(GradientMismatch, match=r"d loss / d x: 24 of 24 entries differ; first at \(0, 0, 0, 0\)"):
        check_layer(Twice((2, 3, 2), 0.5, np.float64))


def test_a_declared_split_equals_the_whole_model():
    import tests.plugins.user_layers  # noqa: F401

    specs = (LayerSpec("nobias_dense", units=9, activation="tanh"), LayerSpec("dense", units=6, activation="relu"))
    network = build_network(specs, (7,), 4, dtype=np.float64)
    rng = np.random.default_rng(0)
    params = network.init_params(1)
    x, y = rng.standard_normal((5, 7)), rng.integers(0, 4, 5)
    whole = np.empty_like(params)
    loss = network.loss_and_grad(params, x, y, whole)[0]
    results, grad = run_partitioned(network, 3, params, x, y)
    assert all(abs(r[0] - loss) < 1e-12 for r in results.values())
    np.testing.assert_allclose(grad, whole, rtol=1e-10, atol=1e-13)


def test_a_layer_without_a_split_is_refused_for_partitions_naming_it():
    import tests.plugins.user_layers  # noqa: F401

    network = build_network((LayerSpec("dense", units=8), spec_module.make_spec("scale", {"init": 1.0})), (6,), 4)
    with pytest.raises(LayoutError) as err:
        plan_partitions(network, 2)
    assert err.value.problems == [
        "model layer 1 (scale) declares no split over partitions: it cannot run with "
        "topology.partitions_per_replica = 2; use partitions_per_replica = 1 or give the layer type a "
        "`partition` (docs/custom_layers.md)"
    ]


def test_registration_mistakes_are_errors():
    with pytest.raises(ValueError, match="already registered"):
        register_layer("dense")(type("Other", (Layer,), {"keys": {}}))
    with pytest.raises(TypeError, match="keys must be a dict of registry.Key"):
        register_layer("bad_keys")(type("BadKeys", (Layer,), {"keys": {"n": (int, 1)}}))
    with pytest.raises(TypeError, match="partition must be"):
        register_layer("bad_split")(type("BadSplit", (Layer,), {"keys": {"n": Key(int, 1)}, "partition": "rows"}))
    with pytest.raises(TypeError, match=r"partition = 'units' needs the methods \['units_param_runs'\]"):
        hooks = {"keys": {}, "partition": "units", "units_sublayer": lambda self, n: self}
        register_layer("half_split")(type("HalfSplit", (Layer,), hooks))
    assert not {"bad_keys", "bad_split", "half_split"} & set(layer_types())


def test_plugins_must_be_a_list_of_module_names():
    with pytest.raises(ConfigError) as err:
        _job("[data]\npath = 'd.h5'\n[run]\nsteps = 1\n", model={"plugins": "my_layers"})
    assert err.value.problems == [
        "model.plugins: expected a list of module names, e.g. [\"my_layers\"], got 'my_layers'"
    ]


def _distbelief(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    program = "import sys; from distbelief_mpi.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", program, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _plugin_job(tmp_path, plugins: str, partitions: int = 1):
    job = tmp_path / "job.toml"
    job.write_text(
        f"[topology]\npartitions_per_replica = {partitions}\n"
        f'[model]\nplugins = {plugins}\nlayers = [{{ type = "scale" }}, {{ type = "dense", units = 8 }}]\n'
        "[data]\npath = 'absent.h5'\n[run]\nsteps = 1\n"
    )
    return str(job)


def test_a_plugin_that_does_not_import_is_exit_2_naming_it(tmp_path):
    done = _distbelief(
        "plan", _plugin_job(tmp_path, '["no_such_layers"]'), "-n", "1", "--input-shape", "1,4,4", "--classes", "3"
    )
    assert done.returncode == 2, done.stderr
    assert f"{tmp_path / 'job.toml'}: " in done.stderr
    assert "model.plugins: cannot import 'no_such_layers': ModuleNotFoundError" in done.stderr


def test_plan_runs_a_plugin_layer_and_refuses_it_split(tmp_path):
    job = _plugin_job(tmp_path, f'["{PLUGIN}"]')
    done = _distbelief("plan", job, "-n", "1", "--input-shape", "1,4,4", "--classes", "3")
    assert done.returncode == 0, done.stderr
    assert "scale" in done.stdout
    job = _plugin_job(tmp_path, f'["{PLUGIN}"]', partitions=2)
    done = _distbelief("plan", job, "-n", "2", "--input-shape", "1,4,4", "--classes", "3")
    assert done.returncode == 2
    assert "model layer 0 (scale) declares no split over partitions" in done.stderr
