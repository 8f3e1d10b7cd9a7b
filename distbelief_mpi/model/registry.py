"""PURE: the layer registry. A `Layer` subclass decorated with `@register_layer("name")` is a
layer type `[model] layers = [{ type = "name", ... }]` may use; the built-in types register the
same way (model/layers.py, model/image_layers.py, loaded on first look-up).

    @register_layer("scale")
    class Scale(Layer):
        keys = {"init": Key(float, 1.0, help="starting factor")}
        help = "y = s * x, one learned factor per input element"

        @classmethod
        def from_spec(cls, spec, in_shape, dtype): ...

What a class declares (model/layers.Layer documents each hook): `keys` (the spec keys, typed,
with defaults and limits), `help`, `from_spec` (build from the previous layer's output shape),
`param_shapes`, `forward`, `backward`, and optionally `partition` with its hooks (how it splits
over a replica's partitions; None: it cannot, and a job with partitions_per_replica > 1 using it
is refused). Everything is looked up once, when the network is built: nothing per step.
"""

from dataclasses import dataclass
from typing import Any

_TYPES: dict[str, Any] = {}  # name -> its Layer subclass
_BUILTINS_LOADED = False


@dataclass(frozen=True)
class Key:
    """One spec key of a layer type: its Python type (int, float, str or bool), its default (None:
    required), the smallest value allowed (numbers), the values allowed (choices) and a help text.
    `note`: added to the "must be >= minimum" message (e.g. what 0 means)."""

    type: type
    default: object = None
    minimum: float | None = None
    choices: tuple = ()
    help: str = ""
    note: str = ""

    def problem(self, value: object, where: str) -> str | None:
        """Why `value` does not fit this key, or None; where: "model.layers[i].key"."""
        if not _type_fits(value, self.type):
            article = "an" if self.type is int else "a"
            word = {int: "integer", float: "number", str: "string", bool: "boolean"}[self.type]
            return f"{where}: expected {article} {word}, got {value!r}"
        if self.minimum is not None and value < self.minimum:  # type: ignore[operator]
            return f"{where}: must be >= {self.minimum:g}{self.note}, got {value}"
        if self.choices and value not in self.choices:
            return f"{where}: {value!r} is not one of {list(self.choices)}"
        return None


def _type_fits(value: object, typ: type) -> bool:
    if typ is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if typ is float:
        return isinstance(value, int | float)
    return isinstance(value, typ)


KEY_TYPES = (int, float, str, bool)
# what model/partition.py calls on a layer of each split kind
SPLIT_HOOKS: dict[str | None, tuple[str, ...]] = {
    None: (),
    "units": ("units_sublayer", "units_param_runs"),
    "image": ("input_span", "image_sublayer", "image_param_runs"),
}


def register_layer(name: str, *, in_specs: bool = True):
    """Class decorator: make `cls` the layer type `name`. in_specs=False: internal (the softmax
    output, appended by the network), not for `[model] layers`. A second class under a taken
    name is an error (two plugins defining one type would otherwise pick one silently)."""

    def register(cls: Any) -> Any:
        _check_declaration(name, cls)
        known = _TYPES.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"layer type {name!r} is already registered by {known.__module__}.{known.__qualname__}")
        cls.kind, cls.in_specs = name, in_specs
        _TYPES[name] = cls
        return cls

    return register


def _check_declaration(name: str, cls: type) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"layer type name {name!r}: use a word of letters, digits and _")
    keys = getattr(cls, "keys", None)
    if not isinstance(keys, dict) or not all(isinstance(k, Key) and k.type in KEY_TYPES for k in keys.values()):
        raise TypeError(f"layer type {name!r}: keys must be a dict of registry.Key with type int, float, str or bool")
    if "type" in keys:
        raise TypeError(f"layer type {name!r}: 'type' is not a key a layer may take")
    partition = getattr(cls, "partition", None)
    if partition not in SPLIT_HOOKS:
        raise TypeError(f"layer type {name!r}: partition must be None, 'units' or 'image'")
    missing = [hook for hook in SPLIT_HOOKS[partition] if not callable(getattr(cls, hook, None))]
    if missing:
        raise TypeError(f"layer type {name!r}: partition = {partition!r} needs the methods {missing}")


def layer_types(in_specs_only: bool = True) -> dict[str, Any]:
    """{name: class} of every registered type (the built-ins first), those for job specs by default."""
    _load_builtins()
    return {name: cls for name, cls in _TYPES.items() if cls.in_specs or not in_specs_only}


def layer_class(name: str) -> Any:
    """The class of a type usable in `[model] layers`, or None."""
    return layer_types().get(name)


def _load_builtins() -> None:
    """Import the built-in layers (they register themselves) on first use: importing the
    registry stays cheap (config.py parses specs without Numba's start-up)."""
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from . import image_layers, layers  # noqa: F401
