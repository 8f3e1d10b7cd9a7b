"""export_model: check the model and the format's packages first, then write (nothing on a refusal)."""

from pathlib import Path

from .common import BUILTIN_TYPES, ExportError, config_json, refuse_layers, require

FORMATS = ("npz", "torch", "onnx")
DEFAULT_NAMES = {"npz": "model.npz", "torch": "model_torch", "onnx": "model.onnx"}
NEEDS = {"npz": (), "torch": ("safetensors",), "onnx": ("onnx",)}  # to write; torch, onnxruntime to run


def default_output(model_file: Path, fmt: str) -> Path:
    """Beside the model file: RUN_DIR/model.npz, RUN_DIR/model_torch/, RUN_DIR/model.onnx."""
    return model_file.parent / DEFAULT_NAMES[fmt]


def export_model(target: str | Path, fmt: str, output: str | Path | None = None) -> Path:
    """Write RUN_DIR's model.h5 (or a model file) as `fmt`; return what was written.
    ExportError (exit 2) for a layer type the format cannot hold or a missing package."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    require(fmt, *NEEDS[fmt])
    from ..api import load_model

    model = load_model(target)
    refuse_layers(model, BUILTIN_TYPES, fmt)  # every format holds every built-in type
    path = Path(output) if output else default_output(model.path, fmt)
    if fmt != "torch" and path.is_dir():
        raise ExportError(f"{path}: is a folder; --format {fmt} writes one file")
    if not path.parent.is_dir():
        raise ExportError(f"{path}: its folder {path.parent} does not exist")
    text = config_json(model)
    if fmt == "npz":
        from .npz import write_npz

        write_npz(model, text, path)
    elif fmt == "torch":
        from .torch_export import write_torch

        write_torch(model, text, path)
    else:
        from .onnx_export import write_onnx

        write_onnx(model, text, path)
    return path
