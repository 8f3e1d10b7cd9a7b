"""--format torch: a folder with model.safetensors (the state_dict: Model.params()'s names and
shapes, float32), config.json (common.config) and distbelief_torch.py (a copy of torch_model.py:
the nn.Module that loads them). Only safetensors is needed to write it; torch to use it."""

from pathlib import Path

from .common import ExportError
from .files import atomic_file, write_text

TORCH_FILES = ("model.safetensors", "config.json", "distbelief_torch.py")
MODULE_SOURCE = Path(__file__).with_name("torch_model.py")


def check_folder(path: Path) -> None:
    """ExportError unless `path` is absent, empty or an earlier torch export (only our files)."""
    if path.exists() and not path.is_dir():
        raise ExportError(f"{path}: exists and is not a folder; --format torch writes a folder")
    others = sorted(p.name for p in path.iterdir() if p.name not in TORCH_FILES) if path.is_dir() else []
    if others:
        raise ExportError(f"{path}: holds other files ({', '.join(others[:3])}); give an empty or new --output folder")


def write_torch(model, config_text: str, path: Path) -> None:
    from safetensors.numpy import save

    check_folder(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_file(path / "model.safetensors") as handle:
        handle.write(save(model.params(), metadata={"format": "distbelief-export"}))
    write_text(path / "config.json", config_text)
    write_text(path / "distbelief_torch.py", MODULE_SOURCE.read_text())
