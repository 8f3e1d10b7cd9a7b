"""What every export format needs: the model's layers as plain JSON entries, the named
tensors, the refusal of layer types a format cannot hold, and the optional-package check."""

import importlib.util
import json

from ..errors import UserInputError

BUILTIN_TYPES = ("dense", "local", "maxpool", "l2pool", "lcn", "output")
EXPORT_FORMAT = "distbelief-export"
PIP_EXPORT = "pip install 'distbelief-mpi[export]'"


class ExportError(UserInputError):
    """A model or a format that cannot be exported as asked (exit 2, nothing written)."""


def layer_entry(layer) -> dict:
    """One built layer as the exported model's config describes it: its type, its shapes
    (in_shape (C, H, W) or (D,), out_shape) and the geometry its type computes with."""
    entry: dict = {"type": layer.kind, "in_shape": list(layer.in_shape), "out_shape": list(layer.out_shape)}
    if layer.kind in ("dense", "output"):
        entry["activation"] = layer.activation
    elif layer.kind == "local":
        entry.update(filters=layer.filters, patch=layer.patch, stride=layer.stride, activation=layer.activation)
    elif layer.kind in ("maxpool", "l2pool"):
        entry.update(size=layer.size, stride=layer.stride)  # the resolved stride (0 in a spec means = size)
    elif layer.kind == "lcn":
        entry["size"] = layer.size
    return entry


def config(model) -> dict:
    """The exported model's description: layers (the softmax output last), input shape,
    classes, x_scale (applied inside: inputs are raw units), step and where it came from."""
    return {
        "format": EXPORT_FORMAT,
        "format_version": 1,
        "layers": [layer_entry(layer) for layer in model.network.layers],
        "input_shape": list(model.input_shape),
        "n_classes": model.n_classes,
        "x_scale": model.x_scale,
        "step": model.step,
        "source": str(model.path),
        "inputs": "raw units: each input is cast to float32 and multiplied by x_scale inside",
        "outputs": "softmax probabilities (n, n_classes)",
    }


def config_json(model) -> str:
    return json.dumps(config(model), indent=1)


def refuse_layers(model, supported: tuple[str, ...], fmt: str) -> None:
    """ExportError naming every layer of a type `fmt` cannot hold (plugin types among them)."""
    bad = [f"layer {i} ({layer.kind!r})" for i, layer in enumerate(model.network.layers) if layer.kind not in supported]
    if bad:
        plugin = any(layer.kind not in BUILTIN_TYPES for layer in model.network.layers)
        why = " (a plugin layer type declares no export)" if plugin else ""
        raise ExportError(
            f"{model.path}: cannot export to {fmt}: {', '.join(bad)}{why}; {fmt} export covers {', '.join(supported)}"
        )


def require(fmt: str, *modules: str) -> None:
    """ExportError naming the pip command when a module the format needs is not installed."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"--format {fmt} needs {', '.join(missing)}: {PIP_EXPORT}")
