"""One partition of a model replica: its layers' parts, and the exchanges between partitions.

    part = PartitionedNetwork(network, plan_partitions(network, P), p, exchanger)
    loss, n_correct = part.loss_and_grad(params_p, x, y, grad_p)   # x: the whole batch, on every partition

params_p / grad_p are partition p's block of the partition-major vector (model/partition.py).
Forward: before each layer a partition gets the input it needs that others hold (image
layers: the halo, the parts of its input block (rows x columns) that its neighbours own, corners
included; dense layers: everything), each boundary unit sent once per partition that needs it.
Backward: the gradient with respect to those inputs goes back the same way and is added up by
the owner. The logits (B, n_classes) are gathered on every partition and the
softmax loss is computed on each (identically); each keeps its classes' slice of the gradient.

`exchanger.exchange(sends, recv_shapes)` moves arrays between partitions: sends {dest: array},
recv_shapes {source: shape} -> {source: array}. comm/partition_exchange.py has the MPI one.
"""

import numpy as np

from ..kernels import softmax_xent
from .network import evaluation_batch
from .partition import LayerSplit, block_rect
from .partition_geometry import Rect, area, overlap


class PartitionedNetwork:
    def __init__(self, network, plans: list[LayerSplit], part: int, exchanger):
        self.network, self.plans, self.part, self.ex = network, plans, part, exchanger
        self.parts = len(plans[0].sublayers)
        self.subs = [plan.sublayers[part] for plan in plans]
        self.slices, start = [], 0
        for sub in self.subs:
            self.slices.append(slice(start, start + sub.n_params))
            start += sub.n_params
        self.n_params, self.dtype = start, network.dtype
        self.bytes_sent = 0  # by this partition, forward and backward, since creation
        self._dlogits: np.ndarray | None = None

    # -- the step -------------------------------------------------------------------------
    def loss_and_grad(self, params, x, y, grad) -> tuple[float, int]:
        """grad (n_params,) <- this partition's block of d(mean loss)/d params; (mean loss, n correct)."""
        x = np.ascontiguousarray(x, dtype=self.dtype)
        act, caches = x, []
        for plan, sub, block in zip(self.plans, self.subs, self.slices):
            local = self._input(plan, act)
            out, cache = sub.forward(params[block], local)
            caches.append(cache)
            act = self._own_rows(plan, out)
        logits = self._gather(self.plans[-1].out_split, act, (len(x), self.network.n_classes))
        dlogits = self._dlogits_buffer(len(x))
        loss_sum, n_correct = softmax_xent(logits, np.asarray(y), dlogits, 1.0 / len(x) if len(x) else 0.0)
        u0, u1 = self.plans[-1].out_split[1][self.part]
        dy = np.ascontiguousarray(dlogits[:, u0:u1])
        for i in range(len(self.plans) - 1, -1, -1):
            plan, sub = self.plans[i], self.subs[i]
            dy = self._expand_rows(plan, sub, dy)
            dx = sub.backward(params[self.slices[i]], caches[i], dy, grad[self.slices[i]], need_dx=i > 0)
            if i > 0:
                dy = self._return_gradient(plan, dx)
        return (loss_sum / len(x) if len(x) else 0.0), int(n_correct)

    def evaluate(self, params, x, y, batch_size: int | None = None, on_batch=None) -> tuple[float, float]:
        """(mean loss, accuracy) over all of x, model-parallel: every partition of the replica
        calls it with the same x, y and its own block; all get the same figures. (nan, nan) on
        an empty x, like Network.evaluate. Default batch: the smallest any partition needs.
        on_batch(): called before each batch (a watchdog's beat)."""
        batch_size = batch_size or self._evaluation_batch()
        total, correct, n = 0.0, 0, len(x)
        for start in range(0, n, batch_size):
            if on_batch is not None:
                on_batch()
            xb = np.ascontiguousarray(x[start : start + batch_size], dtype=self.dtype)
            logits = self._forward_logits(params, xb)
            loss_sum, n_correct = softmax_xent(
                logits, np.asarray(y[start : start + batch_size]), self._dlogits_buffer(len(xb)), 0.0
            )
            total, correct = total + loss_sum, correct + n_correct
        if n == 0:
            return float("nan"), float("nan")
        return total / n, correct / n

    def _evaluation_batch(self) -> int:
        """The same on every partition (they exchange batch by batch): the smallest of theirs."""
        return min(
            evaluation_batch([plan.sublayers[p] for plan in self.plans], self.network.n_classes, True)
            for p in range(self.parts)
        )

    def _forward_logits(self, params, x: np.ndarray) -> np.ndarray:
        """(B, n_classes) logits, gathered on every partition (forward only, no caches kept)."""
        act = x
        for plan, sub, block in zip(self.plans, self.subs, self.slices):
            out, _ = sub.forward(params[block], self._input(plan, act))
            act = self._own_rows(plan, out)
        return self._gather(self.plans[-1].out_split, act, (len(x), self.network.n_classes))

    def _dlogits_buffer(self, batch: int) -> np.ndarray:
        if self._dlogits is None or self._dlogits.shape[0] != batch:
            self._dlogits = np.empty((batch, self.network.n_classes), self.dtype)
        return self._dlogits

    # -- forward exchanges ------------------------------------------------------------------
    def _input(self, plan: LayerSplit, act: np.ndarray) -> np.ndarray:
        """What this partition's sub-layer takes in, from its own part of the previous activation."""
        kind, bounds = plan.in_split
        if kind == "full":
            if plan.kind == "image":
                return np.ascontiguousarray(_within(act, plan.need_rect(self.part), (0, 0, 0, 0)))
            return act
        if plan.kind == "dense":  # everything, from everyone
            full_shape = (len(act),) + self.network.layers[plan.index - 1].out_shape
            return self._gather(plan.in_split, act, full_shape)
        return self._halo(plan, act)

    def _gather(self, split: tuple, own: np.ndarray, full_shape: tuple) -> np.ndarray:
        """Every partition's piece of a rows-, blocks- or units-split activation, assembled: (B, ...) full."""
        own = np.ascontiguousarray(own)
        others = [q for q in range(self.parts) if q != self.part]
        sends = {q: own for q in others}
        shapes = {q: _piece_shape(full_shape, _region(split, q, full_shape)) for q in others}
        got = self._exchange(sends, shapes)
        full = np.empty(full_shape, self.dtype)
        full[_region(split, self.part, full_shape)] = own
        for q, piece in got.items():
            full[_region(split, q, full_shape)] = piece
        return full

    def _rects(self, plan: LayerSplit, width: int) -> list[Rect]:
        """Every partition's block of this image layer's input (the previous layer's output blocks)."""
        return [block_rect(plan.in_split, q, width) for q in range(self.parts)]

    def _halo(self, plan: LayerSplit, act: np.ndarray) -> np.ndarray:
        """The input block need_rect(p) of an image layer, from own block and neighbours' blocks:
        q sends p the overlap of its block and need(p), once, corners included.
        act: (B, C, own rows, own columns) -> (B, C, need rows, need columns)."""
        rects, need = self._rects(plan, self.network.layers[plan.index].in_shape[2]), plan.need_rect(self.part)
        mine = rects[self.part]
        sends, shapes = {}, {}
        for q in range(self.parts):
            give, take = overlap(mine, plan.need_rect(q)), overlap(rects[q], need)
            if q != self.part and area(give):
                sends[q] = np.ascontiguousarray(_within(act, give, mine))
            if q != self.part and area(take):
                shapes[q] = act.shape[:2] + _extent(take)
        got = self._exchange(sends, shapes)
        local = np.empty(act.shape[:2] + _extent(need), self.dtype)
        if area(overlap(mine, need)):  # (a block's own part may lie outside its input block)
            _within(local, overlap(mine, need), need)[...] = _within(act, overlap(mine, need), mine)
        for q, piece in got.items():
            _within(local, overlap(rects[q], need), need)[...] = piece
        return local

    def _own_rows(self, plan: LayerSplit, out: np.ndarray) -> np.ndarray:
        """A layer that computes its whole input block (own block + halo: LCN) keeps own block."""
        if not self.subs[plan.index].computes_halo:
            return out
        width = self.network.layers[plan.index].out_shape[2]
        own = block_rect(plan.out_split, self.part, width)
        return np.ascontiguousarray(_within(out, own, plan.need_rect(self.part)))

    # -- backward exchanges -----------------------------------------------------------------
    def _expand_rows(self, plan: LayerSplit, sub, dy: np.ndarray) -> np.ndarray:
        """Such a layer's backward takes dy for its whole block: zero on the halo (others own it)."""
        if not sub.computes_halo:
            return dy
        need = plan.need_rect(self.part)
        own = block_rect(plan.out_split, self.part, self.network.layers[plan.index].out_shape[2])
        full = np.zeros(dy.shape[:2] + _extent(need), self.dtype)
        _within(full, own, need)[...] = dy
        return full

    def _return_gradient(self, plan: LayerSplit, dx: np.ndarray) -> np.ndarray:
        """d loss / d (own part of the previous activation): own share plus what others send back."""
        if plan.kind == "dense":  # dx (B, D): everyone's partial for everything
            full = dx.reshape((len(dx),) + self.network.layers[plan.index - 1].out_shape)
            split, others = plan.in_split, [q for q in range(self.parts) if q != self.part]
            sends = {q: np.ascontiguousarray(full[_region(split, q, full.shape)]) for q in others}
            own = _region(split, self.part, full.shape)
            shapes = {q: _piece_shape(full.shape, own) for q in others}
            total = np.array(full[own])
            for piece in self._exchange(sends, shapes).values():
                total += piece
            return total
        rects, need = self._rects(plan, self.network.layers[plan.index].in_shape[2]), plan.need_rect(self.part)
        mine = rects[self.part]
        sends, shapes = {}, {}
        for q in range(self.parts):
            give, take = overlap(rects[q], need), overlap(mine, plan.need_rect(q))
            if q != self.part and area(give):
                sends[q] = np.ascontiguousarray(_within(dx, give, need))
            if q != self.part and area(take):
                shapes[q] = dx.shape[:2] + _extent(take)
        total = np.zeros(dx.shape[:2] + _extent(mine), self.dtype)
        if area(overlap(mine, need)):
            _within(total, overlap(mine, need), mine)[...] += _within(dx, overlap(mine, need), need)
        for q, piece in self._exchange(sends, shapes).items():
            _within(total, overlap(mine, plan.need_rect(q)), mine)[...] += piece
        return total

    def _exchange(self, sends: dict, shapes: dict) -> dict:
        sends = {q: a for q, a in sends.items() if a.size}
        shapes = {q: s for q, s in shapes.items() if int(np.prod(s))}
        self.bytes_sent += sum(a.nbytes for a in sends.values())
        return self.ex.exchange(sends, shapes)


def _extent(rect: Rect) -> tuple[int, int]:
    return rect[1] - rect[0], rect[3] - rect[2]


def _within(array: np.ndarray, rect: Rect, origin: Rect) -> np.ndarray:
    """The view of (B, C, H', W') `array`, whose [0, 0] is map position origin[0], origin[2],
    onto map rows rect[0:2] x columns rect[2:4]."""
    r0, c0 = rect[0] - origin[0], rect[2] - origin[2]
    return array[:, :, r0 : r0 + rect[1] - rect[0], c0 : c0 + rect[3] - rect[2]]


def _region(split: tuple, part: int, full_shape: tuple) -> tuple[slice, ...]:
    """Index of partition `part`'s piece in a whole (B, ...) activation: its units (B, D) or its
    rows / block (B, C, H, W)."""
    kind, bounds = split
    if kind == "units":
        return (slice(None), slice(*bounds[part]))
    r0, r1, c0, c1 = block_rect(split, part, full_shape[3])
    return (slice(None), slice(None), slice(r0, r1), slice(c0, c1))


def _piece_shape(full_shape: tuple, region: tuple[slice, ...]) -> tuple:
    return tuple(len(range(*s.indices(n))) for s, n in zip(region, full_shape)) + tuple(full_shape[len(region) :])
