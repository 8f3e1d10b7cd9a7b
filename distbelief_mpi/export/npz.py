"""--format npz: one .npz with every named tensor ("layers.0.W" (D, U) float32, ...) and
"config.json", a 0-d string array holding the layers, input shape, classes and x_scale
(common.config). np.load(path) reads it without pickle."""

from pathlib import Path

import numpy as np

from .files import atomic_file


def write_npz(model, config_text: str, path: Path) -> None:
    arrays = {**model.params(), "config.json": np.array(config_text)}
    with atomic_file(path) as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # a file object: no ".npz" appended
