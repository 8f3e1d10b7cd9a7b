"""Layer specs: what a job spec's `[model] layers = [...]` entries may say (pure, no NumPy).

Each entry is an inline TOML table with a `type` and that type's keys. The network always
ends in a dense softmax layer over the dataset's classes, added automatically, so the
list describes the hidden layers only. Shapes: images are (C, H, W), vectors are (D,).
"""

from dataclasses import dataclass

ACTIVATIONS = ("relu", "sigmoid", "tanh", "none")

# type -> {key: (python type, default)}; a default of None means required.
LAYER_KEYS: dict[str, dict[str, tuple[type, object]]] = {
    "dense": {"units": (int, None), "activation": (str, "relu")},
    "local": {"filters": (int, None), "patch": (int, None), "stride": (int, 1), "activation": (str, "relu")},
    "maxpool": {"size": (int, None), "stride": (int, 0)},
    "l2pool": {"size": (int, None), "stride": (int, 0)},
    "lcn": {"size": (int, 5)},
}

LAYER_HELP = {
    "dense": "fully connected: units, activation (relu, sigmoid, tanh or none)",
    "local": "locally connected 2-D, no weight sharing: filters, patch, stride, activation",
    "maxpool": "max pooling per channel: size, stride (0 = size)",
    "l2pool": "L2 pooling per channel, sqrt(sum x^2): size, stride (0 = size)",
    "lcn": "local contrast normalisation over a size x size window (odd) across channels",
}


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
    """One hidden layer. Keys that do not apply to `type` keep their zero defaults."""

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


def parse_layer(entry: object, where: str) -> tuple[LayerSpec | None, list[str]]:
    """Turn one TOML table into a LayerSpec; return (spec or None, problems)."""
    if not isinstance(entry, dict):
        return None, [f'{where}: expected an inline table like {{ type = "dense", units = 64 }}']
    kind = entry.get("type")
    if kind not in LAYER_KEYS:
        return None, [f"{where}.type: {kind!r} is not a layer type; use one of {sorted(LAYER_KEYS)}"]
    allowed = LAYER_KEYS[kind]
    problems, values = [], {}
    for key in entry:
        if key != "type" and key not in allowed:
            problems.append(f"{where}.{key}: unknown key for a {kind} layer ({LAYER_HELP[kind]})")
    for key, (typ, default) in allowed.items():
        value = entry.get(key, default)
        if value is None:
            problems.append(f"{where}.{key}: required for a {kind} layer")
            continue
        if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{where}.{key}: expected an integer, got {value!r}")
            continue
        if typ is str and not isinstance(value, str):
            problems.append(f"{where}.{key}: expected a string, got {value!r}")
            continue
        values[key] = value
    problems += _check_values(kind, values, where)
    if problems:
        return None, problems
    return LayerSpec(type=kind, **values), []


def _check_values(kind: str, values: dict, where: str) -> list[str]:
    problems = []
    for key in ("units", "filters", "patch", "size"):
        if key in values and values[key] < 1:
            problems.append(f"{where}.{key}: must be >= 1, got {values[key]}")
    if "stride" in values and values["stride"] < (1 if kind == "local" else 0):
        problems.append(f"{where}.stride: must be >= 1 (0 means = size for pooling), got {values['stride']}")
    if "activation" in values and values["activation"] not in ACTIVATIONS:
        problems.append(f"{where}.activation: {values['activation']!r} is not one of {list(ACTIVATIONS)}")
    if kind == "lcn" and values.get("size", 1) % 2 == 0:
        problems.append(f"{where}.size: a contrast-normalisation window must be odd, got {values['size']}")
    return problems
