"""Layer specs: what a job spec's `[model] layers = [...]` entries may say (pure, no NumPy).

Each entry is an inline TOML table with a `type` and that type's keys, which the type declares
when it registers (model/registry.py; the built-ins in model/layers.py and image_layers.py). The
network always ends in a dense softmax layer over the dataset's classes, added automatically, so
the list describes the hidden layers only. Shapes: images are (C, H, W), vectors are (D,).
"""

from dataclasses import dataclass, field, fields

from .registry import layer_class, layer_types

ACTIVATIONS = ("relu", "sigmoid", "tanh", "none")

GRID_WORDS = ("rows", "auto")  # topology.partition_grid besides "AxB"


def parse_grid(text: str) -> tuple[int, int] | None:
    """topology.partition_grid "AxB" -> (A, B) (A blocks of rows x B of columns); None for
    "rows", "auto" or anything else (config.py reports what is malformed)."""
    a, sep, b = text.partition("x")
    if not sep or not (a.isdigit() and b.isdigit()) or int(a) < 1 or int(b) < 1:
        return None
    return int(a), int(b)


@dataclass(frozen=True)
class LayerSpec:
    """One hidden layer. Keys that do not apply to `type` keep their zero defaults.

    The fields are the built-in types' keys; checkpoints store dataclasses.asdict of each spec
    (checkpoint/resume.layout_signature), so they must not change. A registered type's keys
    without a field here live in PluginLayerSpec.options."""

    type: str
    units: int = 0
    filters: int = 0
    patch: int = 0
    stride: int = 0
    size: int = 0
    activation: str = "none"

    @property
    def pool_stride(self) -> int:
        return self.stride or self.size


SPEC_FIELDS = tuple(f.name for f in fields(LayerSpec) if f.name != "type")


@dataclass(frozen=True)
class PluginLayerSpec(LayerSpec):
    """A layer whose type takes keys LayerSpec has no field for: those are in `options` and read
    as attributes (spec.init for options {"init": 0.5}). Only such specs carry `options`."""

    options: dict = field(default_factory=dict, hash=False)

    def __getattr__(self, name: str):  # called only for names that are not fields
        options = self.__dict__.get("options", {})
        if name in options:
            return options[name]
        raise AttributeError(f"a {self.__dict__.get('type')!r} layer spec has no key {name!r}")


def make_spec(kind: str, values: dict) -> LayerSpec:
    """The spec of a `kind` layer with these key values: a plain LayerSpec when every key has a
    field (all built-in types), else a PluginLayerSpec."""
    plain = {key: value for key, value in values.items() if key in SPEC_FIELDS}
    options = {key: value for key, value in values.items() if key not in SPEC_FIELDS}
    return PluginLayerSpec(type=kind, **plain, options=options) if options else LayerSpec(type=kind, **plain)


def spec_entry(spec: LayerSpec) -> dict:
    """{"type": ..., key: value, ...}: the keys the spec's type takes, as `[model] layers`
    writes them (parse_layer reads it back to an equal spec)."""
    cls = layer_class(spec.type)
    if cls is None:
        raise ValueError(f"layer type {spec.type!r} is not registered (is its plugin imported?)")
    return {"type": spec.type, **{key: getattr(spec, key) for key in cls.keys}}


def parse_layer(entry: object, where: str) -> tuple[LayerSpec | None, list[str]]:
    """Turn one TOML table into a LayerSpec; return (spec or None, problems)."""
    if not isinstance(entry, dict):
        return None, [f'{where}: expected an inline table like {{ type = "dense", units = 64 }}']
    kind = entry.get("type")
    if not isinstance(kind, str) or (cls := layer_class(kind)) is None:
        return None, [f"{where}.type: {kind!r} is not a layer type; use one of {sorted(layer_types())}"]
    problems = [
        f"{where}.{key}: unknown key for a {kind} layer ({cls.help})"
        for key in entry
        if key not in cls.keys and key != "type"
    ]
    values = {key: entry.get(key, declared.default) for key, declared in cls.keys.items()}
    problems += spec_problems(kind, values, where)
    if problems:
        return None, problems
    return make_spec(kind, {key: _as_declared(cls.keys[key].type, value) for key, value in values.items()}), []


def _as_declared(typ: type, value: object) -> object:
    return float(value) if typ is float else value  # type: ignore[arg-type]  # an int where a float is declared


def spec_values(spec: LayerSpec) -> dict:
    """{key: value} of the keys spec's (registered) type takes, as the spec holds them."""
    cls = layer_class(spec.type)
    return {key: getattr(spec, key, declared.default) for key, declared in cls.keys.items()} if cls else {}


def spec_problems(kind: str, values: dict, where: str) -> list[str]:
    """Every key value of a `kind` layer that is missing, of the wrong type or out of range, then
    the type's own checks across keys (only when each key is right)."""
    cls = layer_class(kind)
    if cls is None:
        return [f"{where}: unknown layer type {kind!r}"]
    problems = []
    for key, declared in cls.keys.items():
        value = values.get(key)
        if value is None:
            problems.append(f"{where}.{key}: required for a {kind} layer")
            continue
        problem = declared.problem(value, f"{where}.{key}")
        if problem:
            problems.append(problem)
    return problems or list(cls.spec_problems(values, where))


def _builtin_types() -> dict:
    return {kind: cls for kind, cls in layer_types().items() if cls.__module__.startswith("distbelief_mpi.")}


def __getattr__(name: str):
    """LAYER_KEYS {type: {key: (python type, default)}} and LAYER_HELP {type: text}: the built-in
    types' tables (a default of None means required), computed from the registry on use.
    Plugins' types are not in them: spec_entry / layer_class cover every registered type."""
    if name == "LAYER_KEYS":
        return {
            kind: {k: (key.type, key.default) for k, key in cls.keys.items()} for kind, cls in _builtin_types().items()
        }
    if name == "LAYER_HELP":
        return {kind: cls.help for kind, cls in _builtin_types().items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
