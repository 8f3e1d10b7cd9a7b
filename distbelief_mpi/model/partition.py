"""PURE: how one model replica is split over P partitions within its layers (the paper's Fig. 1),
and the parameter order that makes each partition's parameters one contiguous block.

Image layers (local, maxpool, l2pool, lcn) split their OUTPUT map into P blocks of rows (all
channels and columns); partition p computes rows [r0, r1) and needs input rows [a, b): its own
rows plus a halo owned by its neighbours. Dense layers (and the softmax output) split their
output units into P slices; each needs the whole input. Activations are therefore held as

    ("rows", bounds)   image (B, C, H, W): partition p holds rows bounds[p] of H
    ("units", bounds)  vector (B, D): partition p holds units bounds[p]
    ("full", None)     every partition holds all of it (the input batch; the logits)

Parameters: a layer's block for partition p is, in the canonical (P = 1) layout,
  dense  W (D, U) row-major then b (U,): columns [u0, u1) of W and b[u0:u1];
  local  W (positions, K, F) then b (positions, F): the positions of output rows [r0, r1),
and is stored in the partition's own layer layout (W_p (D, U_p) then b_p; W_p (pos_p, K, F) then
b_p), so the partition's sub-layers are ordinary layers. The partitioned flat vector is
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
from .image_layers import LCN, L2Pool2D, LocallyConnected2D, MaxPool2D
from .layers import Dense


def even_bounds(n: int, parts: int) -> tuple[tuple[int, int], ...]:
    """[start, stop) of `parts` near-equal contiguous pieces of range(n) (larger ones last)."""
    cuts = [n * p // parts for p in range(parts + 1)]
    return tuple((cuts[p], cuts[p + 1]) for p in range(parts))


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
    kind: str  # "image" or "dense"
    in_split: tuple  # the previous activation's split ("rows"/"units"/"full", bounds)
    out_split: tuple  # this layer's output split
    need: tuple[tuple[int, int], ...]  # image: input rows [a, b) each partition needs; dense: ()
    sublayers: tuple  # per partition: an ordinary layer over its part
    param_runs: tuple[tuple[Runs, ...], ...]  # per partition: its elements of the layer's block, in order


def plan_partitions(network, parts: int) -> list[LayerSplit]:
    """The split of every layer of `network` (model/network.Network) over `parts` partitions.
    Raises LayoutError when a layer has fewer output rows or units than partitions."""
    problems, plans = [], []
    split = ("full", None)
    for index, layer in enumerate(network.layers):
        rows_or_units = layer.out_shape[1] if len(layer.out_shape) == 3 else layer.out_shape[0]
        if rows_or_units < parts:
            what = "rows" if len(layer.out_shape) == 3 else "units"
            problems.append(
                f"model layer {index} ({layer.kind}) has {rows_or_units} output {what}: too few to "
                f"split over topology.partitions_per_replica = {parts}"
            )
            continue
        plan = (
            _plan_image(index, layer, split, parts)
            if len(layer.out_shape) == 3
            else _plan_dense(index, layer, split, parts)
        )
        plans.append(plan)
        split = plan.out_split
    if problems:
        raise LayoutError(problems)
    return plans


def _plan_image(index, layer, in_split, parts) -> LayerSplit:
    out_bounds = even_bounds(layer.out_shape[1], parts)
    c, h, w = layer.in_shape
    need, subs, params = [], [], []
    for r0, r1 in out_bounds:
        a, b = _input_rows(layer, r0, r1, h)
        need.append((a, b))
        subs.append(_image_sublayer(layer, (c, b - a, w)))
        params.append(_local_param_runs(layer, r0, r1) if isinstance(layer, LocallyConnected2D) else ())
    return LayerSplit(index, "image", in_split, ("rows", out_bounds), tuple(need), tuple(subs), tuple(params))


def _input_rows(layer, r0: int, r1: int, h: int) -> tuple[int, int]:
    """Input rows output rows [r0, r1) depend on. LCN: 2 * (size // 2) beyond them on each side
    (its mean and its variance each look size // 2 rows away), cropped to the image."""
    if isinstance(layer, LCN):
        halo = 2 * (layer.size // 2)
        return max(0, r0 - halo), min(h, r1 + halo)
    stride = layer.stride
    window = layer.patch if isinstance(layer, LocallyConnected2D) else layer.size
    return r0 * stride, (r1 - 1) * stride + window


def _image_sublayer(layer, in_shape):
    if isinstance(layer, LocallyConnected2D):
        return LocallyConnected2D(in_shape, layer.filters, layer.patch, layer.stride, layer.activation, layer.dtype)
    if isinstance(layer, MaxPool2D):
        return MaxPool2D(in_shape, layer.size, layer.stride, layer.dtype)
    if isinstance(layer, L2Pool2D):
        return L2Pool2D(in_shape, layer.size, layer.stride, layer.dtype)
    return LCN(in_shape, layer.size, layer.dtype)


def _local_param_runs(layer, r0: int, r1: int) -> tuple[Runs, ...]:
    """The positions of output rows [r0, r1): their W rows (pos, K, F), then their b rows (pos, F)."""
    ow = layer.out_shape[2]
    p0, p1 = r0 * ow, r1 * ow
    n_w, per_w, f = layer.n_pos * layer.k * layer.filters, layer.k * layer.filters, layer.filters
    return (Runs(p0 * per_w, (p1 - p0) * per_w, 0, 1), Runs(n_w + p0 * f, (p1 - p0) * f, 0, 1))


def _plan_dense(index, layer, in_split, parts) -> LayerSplit:
    out_bounds = even_bounds(layer.units, parts)
    subs, params = [], []
    n_w = layer.n_in * layer.units
    for u0, u1 in out_bounds:
        subs.append(Dense(layer.in_shape, u1 - u0, layer.activation, layer.dtype))  # the output layer's is "none"
        params.append((Runs(u0, u1 - u0, layer.units, layer.n_in), Runs(n_w + u0, u1 - u0, 0, 1)))
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


@cache
def split_model(network, parts: int) -> tuple[list[LayerSplit], ParamOrder]:
    """The plans and the parameter order for `parts` partitions, computed once per network
    (every rank needs the offsets at start-up; replicas need the plans, shards the order)."""
    plans = plan_partitions(network, parts)
    return plans, param_order(network, plans)


def initial_slice(network, parts: int, seed: int, start: int, stop: int) -> np.ndarray:
    """Elements [start, stop) of the initial parameters in the order shards hold them
    (partition-major for parts > 1), drawn alone: the same values whatever parts and the
    shard ranges are (model/init.py), and nothing of whole-model size is built."""
    out = np.empty(stop - start, network.dtype)
    if parts == 1:
        network.init_range(seed, start, stop, out)
        return out
    for position, canonical_start, length in split_model(network, parts)[1].segments(start, stop):
        network.init_range(seed, canonical_start, canonical_start + length, out[position - start :][:length])
    return out


def partition_offsets(network, spec) -> tuple[int, ...]:
    """The partitions' block offsets for the job's partitions_per_replica (() when it is 1)."""
    parts = spec.topology.partitions_per_replica
    if parts == 1:
        return ()
    return split_model(network, parts)[1].offsets
