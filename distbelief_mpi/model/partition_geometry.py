"""PURE: where the partitions' blocks of an image layer lie, and which input each block reads.

A grid (A, B) cuts every image layer's OUTPUT map (C, OH, OW) into A x B blocks: A near-equal
bands of rows times B near-equal bands of columns, all channels. Partition p = i * B + j holds
rows band i and columns band j (row-major over the grid); (P, 1) is the rows-only split.

         columns band 0   band 1
        +---------------+---------------+
 rows 0 | partition 0   | partition 1   |      the input a block reads (its window's reach):
        +---------------+---------------+      its own block of the previous map plus a halo
 rows 1 | partition 2   | partition 3   |      from the neighbours it overlaps, corners included
        +---------------+---------------+

Rectangles are (r0, r1, c0, c1): rows [r0, r1) x columns [c0, c1) of a (C, H, W) map.
"""

import numpy as np

from ..errors import LayoutError

Rect = tuple[int, int, int, int]


def even_bounds(n: int, parts: int) -> tuple[tuple[int, int], ...]:
    """[start, stop) of `parts` near-equal contiguous pieces of range(n) (larger ones last)."""
    cuts = [n * p // parts for p in range(parts + 1)]
    return tuple((cuts[p], cuts[p + 1]) for p in range(parts))


def grid_rects(height: int, width: int, grid: tuple[int, int]) -> tuple[Rect, ...]:
    """The A x B blocks of a height x width map, partition-major (p = i * B + j)."""
    rows, cols = even_bounds(height, grid[0]), even_bounds(width, grid[1])
    return tuple((r0, r1, c0, c1) for r0, r1 in rows for c0, c1 in cols)


def input_rect(layer, rect: Rect) -> Rect:
    """The input block output block `rect` of image layer `layer` reads (own + halo): its
    input_span along rows, then along columns (model/image_layers.ImageLayer)."""
    _, h, w = layer.in_shape
    return layer.input_span(rect[0], rect[1], h) + layer.input_span(rect[2], rect[3], w)


def overlap(x: Rect, y: Rect) -> Rect:
    """Their intersection; empty (area 0) when they do not meet."""
    r0, r1, c0, c1 = max(x[0], y[0]), min(x[1], y[1]), max(x[2], y[2]), min(x[3], y[3])
    return (r0, max(r0, r1), c0, max(c0, c1))


def area(rect: Rect) -> int:
    return (rect[1] - rect[0]) * (rect[3] - rect[2])


def overlap_areas(owned: np.ndarray, needed: np.ndarray) -> np.ndarray:
    """(P, Q) pixels of block owned[p] inside block needed[q]; owned (P, 4), needed (Q, 4) rects."""
    rows = np.minimum(owned[:, None, 1], needed[None, :, 1]) - np.maximum(owned[:, None, 0], needed[None, :, 0])
    cols = np.minimum(owned[:, None, 3], needed[None, :, 3]) - np.maximum(owned[:, None, 2], needed[None, :, 2])
    return np.clip(rows, 0, None) * np.clip(cols, 0, None)


def grid_problems(network, grid: tuple[int, int], key: str) -> list[str]:
    """Every layer that cannot split over the grid: a type that declares no split (its `partition`
    is None), or a layer too small: image layers need >= A output rows and >= B columns, units
    ones >= A x B units. key: what the message names (the job's setting)."""
    problems, parts = [], grid[0] * grid[1]
    for index, layer in enumerate(network.layers):
        problem = _split_problem(index, layer, key)
        if problem:
            problems.append(problem)
        elif layer.partition == "image":
            _, oh, ow = layer.out_shape
            if oh < grid[0] or ow < grid[1]:
                what = f"{oh} output rows" if grid[1] == 1 else f"{oh} x {ow} output rows x columns"
                problems.append(f"model layer {index} ({layer.kind}) has {what}: too few to split over {key}")
        elif layer.out_shape[0] < parts:
            problems.append(
                f"model layer {index} ({layer.kind}) has {layer.out_shape[0]} output units: too few to split over {key}"
            )
    return problems


def _split_problem(index: int, layer, key: str) -> str | None:
    """Why layer `index` cannot be split at all (whatever its size), or None."""
    if layer.partition is None:
        return (
            f"model layer {index} ({layer.kind}) declares no split over partitions: it cannot run with {key}; "
            "use partitions_per_replica = 1 or give the layer type a `partition` (docs/custom_layers.md)"
        )
    dims = {"image": 3, "units": 1}[layer.partition]
    if len(layer.out_shape) != dims:
        shape = "x".join(map(str, layer.out_shape))
        return f"model layer {index} ({layer.kind}) splits as {layer.partition!r} but its output is {shape}"
    return None


def grids(parts: int) -> list[tuple[int, int]]:
    """Every A x B = parts, rows-only (parts, 1) first."""
    return [(parts // b, b) for b in range(1, parts + 1) if parts % b == 0]


def halo_received(network, grid: tuple[int, int]) -> int:
    """Elements (per example) the busiest partition receives in one forward pass's halo exchanges:
    over the image layers after the first (the first reads the input batch itself), the parts of
    its input block that other partitions own, times the input channels."""
    received = np.zeros(grid[0] * grid[1], np.int64)
    previous = None  # (P, 4): the previous image layer's output blocks
    for layer in network.layers:
        if len(layer.out_shape) != 3:
            break
        rects = np.array(grid_rects(layer.out_shape[1], layer.out_shape[2], grid))
        if previous is not None:
            areas = overlap_areas(previous, np.array([input_rect(layer, tuple(r)) for r in rects]))
            np.fill_diagonal(areas, 0)
            received += areas.sum(axis=0) * layer.in_shape[0]
        previous = rects
    return int(received.max())


def largest_blocks(network, grid: tuple[int, int]) -> int:
    """Output elements (per example) of the busiest partition's image-layer blocks: how evenly the
    grid shares the image layers' work."""
    total = 0
    for layer in network.layers:
        if len(layer.out_shape) == 3:
            total += max(area(r) for r in grid_rects(layer.out_shape[1], layer.out_shape[2], grid)) * layer.out_shape[0]
    return total


def choose_grid(network, parts: int) -> tuple[int, int]:
    """ "auto": of the grids every layer fits, the one whose busiest partition receives the fewest
    halo elements, then the one with the smallest largest blocks; remaining ties go to fewer
    columns (rows-only first). LayoutError when none fits."""
    fitting = [g for g in grids(parts) if not grid_problems(network, g, "")]
    if not fitting:
        raise LayoutError(grid_problems(network, (parts, 1), f"topology.partitions_per_replica = {parts}"))
    return min(fitting, key=lambda g: (halo_received(network, g), largest_blocks(network, g), g[1]))
