"""PURE: how one model replica is split over P partitions within its layers (the paper's Fig. 1),
and the parameter order that makes each partition's parameters one contiguous block.

How a layer splits is its type's declaration (`partition`, model/layers.Layer): "image" layers
(local, maxpool, l2pool, lcn) split their OUTPUT map into the blocks of a grid
A x B = P (model/partition_geometry.py): A bands of rows times B bands of columns, all channels;
(P, 1), the default, is blocks of whole rows. Partition p computes its block and needs the input
block its windows reach: its own block plus a halo owned by its neighbours (corners included).
"units" layers (dense, the softmax output) split their output units into P slices; each needs
the whole input. A type that declares no split is refused for P > 1, naming it. Activations are therefore held as

    ("rows", bounds)   image (B, C, H, W): partition p holds rows bounds[p] of H (all columns)
    ("blocks", rects)  image: partition p holds rows rects[p][0:2] x columns rects[p][2:4]
    ("units", bounds)  vector (B, D): partition p holds units bounds[p]
    ("full", None)     every partition holds all of it (the input batch; the logits)

Parameters: a layer's block for partition p is, in the canonical (P = 1) layout,
  dense  W (D, U) row-major then b (U,): columns [u0, u1) of W and b[u0:u1];
  local  W (positions, K, F) then b (positions, F), positions row-major over (OH, OW): the
         positions of its output block (one run per block row; one run in all for whole rows),
and is stored in the partition's own layer layout (W_p (D, U_p) then b_p; W_p (pos_p, K, F) then
b_p), so the partition's sub-layers are ordinary layers (the layer's units_param_runs /
image_param_runs and units_sublayer / image_sublayer hooks give both). The partitioned flat vector is
partition-major (partition 0's blocks of every layer, then partition 1's, ...). Which canonical
elements a block holds is described by strided runs (`Runs`: a few per layer, never an index
per parameter), so no rank needs an array of whole-model size to map one order to the other.
With P = 1 the partitioned vector is the canonical vector itself.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np

from ..errors import LayoutError
from .partition_geometry import Rect, choose_grid, even_bounds, grid_problems, grid_rects, input_rect
from .spec import parse_grid


@dataclass(frozen=True)
class Runs:
    """`count` runs of `length` consecutive canonical elements, the first at `start`, each next
    one `stride` further on; laid out one after another in the partitioned vector. A dense
    layer's column block W[:, u0:u1] of W (D, U) is Runs(u0, u1 - u0, U, D)."""

    start: int
    length: int
    stride: int
    count: int

    @property
    def size(self) -> int:
        return self.length * self.count

    def shifted(self, offset: int) -> "Runs":
        return Runs(self.start + offset, self.length, self.stride, self.count)

    def view(self, canonical: np.ndarray) -> np.ndarray:
        """(count, length) view of these elements of a canonical vector (no copy)."""
        item = canonical.itemsize
        return np.lib.stride_tricks.as_strided(
            canonical[self.start :], (self.count, self.length), (self.stride * item, item), writeable=True
        )

    def segments(self, lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
        """(position within these runs, canonical start, length) of the contiguous pieces of
        positions [lo, hi) (0 <= lo <= hi <= size): one per run touched."""
        if hi <= lo:
            return
        for row in range(lo // self.length, (hi - 1) // self.length + 1):
            a, b = max(lo, row * self.length), min(hi, (row + 1) * self.length)
            yield a, self.start + row * self.stride + (a - row * self.length), b - a


@dataclass(frozen=True)
class LayerSplit:
    """One layer's split: what each partition takes in and gives out, and its sub-layer."""

    index: int
    kind: str  # "image" or "dense" (a "units" layer: split by output units)
    in_split: tuple  # the previous activation's split ("rows"/"units"/"full", bounds)
    out_split: tuple  # this layer's output split
    need: tuple[tuple[int, int], ...]  # image: input rows [a, b) each partition needs; dense: ()
    sublayers: tuple  # per partition: an ordinary layer over its part
    param_runs: tuple[tuple[Runs, ...], ...]  # per partition: its elements of the layer's block, in order
    need_cols: tuple[tuple[int, int], ...] = ()  # image: input columns [c, d) each partition needs; dense: ()

    def need_rect(self, part: int) -> Rect:
        """The input block (rows x columns) partition `part` of an image layer reads."""
        return self.need[part] + self.need_cols[part]


def block_rect(split: tuple, part: int, width: int) -> Rect:
    """Partition `part`'s block of an image activation split ("rows" or "blocks") of `width` columns."""
    kind, bounds = split
    return bounds[part] if kind == "blocks" else bounds[part] + (0, width)


def plan_partitions(network, parts: int, grid: tuple[int, int] | None = None) -> list[LayerSplit]:
    """The split of every layer of `network` (model/network.Network) over `parts` partitions, image
    layers in the blocks of `grid` (A, B), A x B = parts (None: (parts, 1), whole rows).
    Raises LayoutError when a layer has fewer output rows, columns or units than the grid needs."""
    grid = grid or (parts, 1)
    if grid[0] * grid[1] != parts:
        raise ValueError(f"grid {grid[0]}x{grid[1]} is not {parts} partitions")
    key = (
        f"topology.partitions_per_replica = {parts}"
        if grid[1] == 1
        else f"topology.partition_grid = {grid[0]}x{grid[1]}"
    )
    problems = grid_problems(network, grid, key)
    if problems:
        raise LayoutError(problems)
    plans, split = [], ("full", None)
    for index, layer in enumerate(network.layers):
        image = layer.partition == "image"  # else "units": grid_problems refused the rest
        plan = _plan_image(index, layer, split, grid) if image else _plan_dense(index, layer, split, parts)
        plans.append(plan)
        split = plan.out_split
    return plans


def _plan_image(index, layer, in_split, grid) -> LayerSplit:
    rects = grid_rects(layer.out_shape[1], layer.out_shape[2], grid)
    need, subs, params = [], [], []
    for rect in rects:
        a, b, c, d = input_rect(layer, rect)
        need.append((a, b, c, d))
        subs.append(layer.image_sublayer((layer.in_shape[0], b - a, d - c)))
        params.append(layer.image_param_runs(rect))
    out_split = ("rows", tuple(r[:2] for r in rects)) if grid[1] == 1 else ("blocks", rects)
    return LayerSplit(
        index,
        "image",
        in_split,
        out_split,
        tuple(n[:2] for n in need),
        tuple(subs),
        tuple(params),
        tuple(n[2:] for n in need),
    )


def _plan_dense(index, layer, in_split, parts) -> LayerSplit:
    out_bounds = even_bounds(layer.out_shape[0], parts)
    subs, params = [], []
    for u0, u1 in out_bounds:
        subs.append(layer.units_sublayer(u1 - u0))
        params.append(layer.units_param_runs(u0, u1))
    return LayerSplit(index, "dense", in_split, ("units", out_bounds), (), tuple(subs), tuple(params))


@dataclass(frozen=True)
class ParamOrder:
    """The partition-major parameter order: partition p's block is [offsets[p], offsets[p + 1])
    and holds the canonical elements runs[p] (in order). Maps whole vectors (tests, one rank's
    own model) and, for ranks that hold a slice only, any range piece by piece (segments)."""

    runs: tuple[tuple[Runs, ...], ...]
    offsets: tuple[int, ...]

    def to_canonical(self, partitioned: np.ndarray) -> np.ndarray:
        canonical = np.empty_like(partitioned)
        for position, runs in self._placed():
            runs.view(canonical)[...] = partitioned[position : position + runs.size].reshape(runs.count, runs.length)
        return canonical

    def from_canonical(self, canonical: np.ndarray) -> np.ndarray:
        partitioned = np.empty_like(canonical)
        for position, runs in self._placed():
            partitioned[position : position + runs.size] = runs.view(canonical).ravel()
        return partitioned

    def segments(self, lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
        """(partitioned position, canonical start, length) of the contiguous pieces of the
        partitioned range [lo, hi), in order: a shard maps its slice without index arrays."""
        for position, runs in self._placed():
            a, b = max(lo, position), min(hi, position + runs.size)
            if a < b:
                for offset, start, length in runs.segments(a - position, b - position):
                    yield position + offset, start, length

    def _placed(self) -> Iterator[tuple[int, Runs]]:
        """(partitioned position, runs) of every run group, partition by partition."""
        position = 0
        for runs_of_partition in self.runs:
            for runs in runs_of_partition:
                yield position, runs
                position += runs.size


def param_order(network, plans: list[LayerSplit]) -> ParamOrder:
    parts = len(plans[0].sublayers)
    runs, offsets = [], [0]
    for p in range(parts):
        mine = [r.shifted(block.start) for plan, block in zip(plans, network.param_slices) for r in plan.param_runs[p]]
        runs.append(tuple(r for r in mine if r.size))
        offsets.append(offsets[-1] + sum(plan.sublayers[p].n_params for plan in plans))
    return ParamOrder(tuple(runs), tuple(offsets))


def split_model(network, parts: int, grid: tuple[int, int] | None = None) -> tuple[list[LayerSplit], ParamOrder]:
    """The plans and the parameter order for `parts` partitions in `grid` (None: whole rows),
    computed once per network and grid (every rank needs the offsets at start-up; replicas need
    the plans, shards the order)."""
    return _split_model(network, parts, grid or (parts, 1))


@cache
def _split_model(network, parts: int, grid: tuple[int, int]) -> tuple[list[LayerSplit], ParamOrder]:
    plans = plan_partitions(network, parts, grid)
    return plans, param_order(network, plans)


def job_grid(network, topology) -> tuple[int, int]:
    """The grid (A, B) of topology.partition_grid: "rows" -> (P, 1), "AxB" -> (A, B), "auto" ->
    partition_geometry.choose_grid (the least halo for the busiest partition)."""
    parts = topology.partitions_per_replica
    if topology.partition_grid == "auto":
        return choose_grid(network, parts)
    return parse_grid(topology.partition_grid) or (parts, 1)


def job_split(network, topology) -> tuple[list[LayerSplit], ParamOrder]:
    """split_model for a job's topology (partitions_per_replica and partition_grid)."""
    return split_model(network, topology.partitions_per_replica, job_grid(network, topology))


def initial_slice(
    network, parts: int, seed: int, start: int, stop: int, grid: tuple[int, int] | None = None
) -> np.ndarray:
    """Elements [start, stop) of the initial parameters in the order shards hold them
    (partition-major for parts > 1, blocks of `grid`), drawn alone: the same values whatever
    parts and the shard ranges are (model/init.py), and nothing of whole-model size is built."""
    out = np.empty(stop - start, network.dtype)
    if parts == 1:
        network.init_range(seed, start, stop, out)
        return out
    for position, canonical_start, length in split_model(network, parts, grid)[1].segments(start, stop):
        network.init_range(seed, canonical_start, canonical_start + length, out[position - start :][:length])
    return out


def partition_offsets(network, spec) -> tuple[int, ...]:
    """The partitions' block offsets for the job's partitions_per_replica and partition_grid
    (() when it is 1)."""
    if spec.topology.partitions_per_replica == 1:
        return ()
    return job_split(network, spec.topology)[1].offsets
