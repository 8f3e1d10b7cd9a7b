"""How a user's x rows become our input_shape: vectors, single-channel and multi-channel images.

Our images are channels-first, (C, H, W). A 4-D x array (n, A, B, C) is either already
NCHW (A channels of B x C) or channels-last NHWC (C channels of A x B), as Keras and most
image libraries write it. Nothing in the array says which, so:

* `--layout nchw|nhwc` is obeyed exactly;
* without it, rows (A, B, C) with C in {1, 3} and A, B both larger than C are taken as
  NHWC (a (28, 28, 1) row is a 28x28 grey image, not 28 channels of 28x1), anything else
  as NCHW; the assumption is logged unless the rows are plainly NCHW (A in {1, 3}).
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from distbelief_mpi.errors import DatasetError

LAYOUTS = ("nchw", "nhwc")
USUAL_CHANNELS = (1, 3)  # grey, RGB


@dataclass(frozen=True)
class RowLayout:
    """input_shape: one stored row, (D,) or (C, H, W). channels_last: the source rows are (H, W, C)."""

    input_shape: tuple[int, ...]
    channels_last: bool = False

    def to_stored(self, block: np.ndarray) -> np.ndarray:
        """A block of source rows (k, *row) as (k, *input_shape), C-contiguous."""
        if self.channels_last:
            return np.ascontiguousarray(block.transpose(0, 3, 1, 2))  # (k, H, W, C) -> (k, C, H, W)
        return block.reshape(len(block), *self.input_shape)


def guess_layout(row: tuple[int, ...]) -> str:
    """'nhwc' for rows (H, W, C) with C in {1, 3} and H, W larger than C; else 'nchw'."""
    a, b, c = row
    return "nhwc" if c in USUAL_CHANNELS and min(a, b) > c else "nchw"


def _describe(row: tuple[int, ...], layout: str) -> str:
    a, b, c = row
    if layout == "nhwc":
        return f"channels-last NHWC ({c} channel(s) of {a}x{b})"
    return f"channels-first NCHW ({a} channel(s) of {b}x{c})"


def resolve_layout(
    source, x_name: str, row: tuple[int, ...], layout: str | None, log: Callable[[str], None] | None = None
) -> RowLayout:
    """The RowLayout of x rows of shape `row` (x.shape[1:]); `source` and `x_name` name the
    file and array in errors and in the logged assumption."""
    if layout is not None and len(row) != 3:
        raise DatasetError(
            source,
            f"--layout {layout} applies to 4-D images (n, H, W, C) or (n, C, H, W); {x_name} rows have shape {row}",
        )
    if len(row) == 1:
        return RowLayout(row)
    if len(row) == 2:
        return RowLayout((1, *row))
    if len(row) != 3:
        raise DatasetError(source, f"{x_name} rows have shape {row}; expected (D,), (H, W) or 4-D images")
    chosen = layout or guess_layout(row)
    if layout is None and log and not (chosen == "nchw" and row[0] in USUAL_CHANNELS):
        other = "nchw" if chosen == "nhwc" else "nhwc"
        log(
            f"warning: {x_name} rows {row} read as {_describe(row, chosen)}; "
            f"if they are {_describe(row, other)}, pass --layout {other}"
        )
    if chosen == "nhwc":
        return RowLayout((row[2], row[0], row[1]), channels_last=True)
    return RowLayout(row)
