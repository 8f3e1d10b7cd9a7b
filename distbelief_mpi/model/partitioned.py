"""One partition of a model replica: its layers' parts, and the exchanges between partitions.

    part = PartitionedNetwork(network, plan_partitions(network, P), p, exchanger)
    loss, n_correct = part.loss_and_grad(params_p, x, y, grad_p)   # x: the whole batch, on every partition

params_p / grad_p are partition p's block of the partition-major vector (model/partition.py).
Forward: before each layer a partition gets the input it needs that others hold (image
layers: the halo rows; dense layers: everything), each boundary unit sent once per partition
that needs it. Backward: the gradient with respect to those inputs goes back the same way and
is added up by the owner. The logits (B, n_classes) are gathered on every partition and the
softmax loss is computed on each (identically); each keeps its classes' slice of the gradient.

`exchanger.exchange(sends, recv_shapes)` moves arrays between partitions: sends {dest: array},
recv_shapes {source: shape} -> {source: array}. comm/partition_exchange.py has the MPI one.
"""

import numpy as np

from ..kernels import softmax_xent
from .image_layers import LCN
from .network import evaluation_batch
from .partition import LayerSplit


def _overlap(x: tuple[int, int], y: tuple[int, int]) -> tuple[int, int]:
    return max(x[0], y[0]), min(x[1], y[1])


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
                a, b = plan.need[self.part]
                return np.ascontiguousarray(act[:, :, a:b, :])
            return act
        if plan.kind == "dense":  # everything, from everyone
            full_shape = (len(act),) + self.network.layers[plan.index - 1].out_shape
            return self._gather(plan.in_split, act, full_shape)
        return self._halo_rows(plan, act)

    def _gather(self, split: tuple, own: np.ndarray, full_shape: tuple) -> np.ndarray:
        """Every partition's piece of a rows- or units-split activation, assembled: (B, ...) full."""
        kind, bounds = split
        axis = 2 if kind == "rows" else 1
        mine = bounds[self.part]
        own = np.ascontiguousarray(own)
        sends = {q: own for q in range(self.parts) if q != self.part}
        shapes = {q: _with_axis(full_shape, axis, bounds[q]) for q in range(self.parts) if q != self.part}
        got = self._exchange(sends, shapes)
        full = np.empty(full_shape, self.dtype)
        _put(full, axis, mine, own)
        for q, piece in got.items():
            _put(full, axis, bounds[q], piece)
        return full

    def _halo_rows(self, plan: LayerSplit, act: np.ndarray) -> np.ndarray:
        """Input rows need[p] of an image layer, from own rows and neighbours' rows."""
        bounds = plan.in_split[1]
        mine, (a, b) = bounds[self.part], plan.need[self.part]
        sends = {}
        for q in range(self.parts):
            lo, hi = _overlap(mine, plan.need[q])
            if q != self.part and hi > lo:
                sends[q] = np.ascontiguousarray(act[:, :, lo - mine[0] : hi - mine[0], :])
        shapes = {}
        for q in range(self.parts):
            lo, hi = _overlap(bounds[q], (a, b))
            if q != self.part and hi > lo:
                shapes[q] = act.shape[:2] + (hi - lo, act.shape[3])
        got = self._exchange(sends, shapes)
        local = np.empty(act.shape[:2] + (b - a, act.shape[3]), self.dtype)
        lo, hi = _overlap(mine, (a, b))
        if hi > lo:
            local[:, :, lo - a : hi - a, :] = act[:, :, lo - mine[0] : hi - mine[0], :]
        for q, piece in got.items():
            lo, hi = _overlap(bounds[q], (a, b))
            local[:, :, lo - a : hi - a, :] = piece
        return local

    def _own_rows(self, plan: LayerSplit, out: np.ndarray) -> np.ndarray:
        """LCN computes its whole input block (own rows + halo): keep own rows."""
        if not isinstance(self.subs[plan.index], LCN):
            return out
        (r0, r1), (a, _) = plan.out_split[1][self.part], plan.need[self.part]
        return np.ascontiguousarray(out[:, :, r0 - a : r1 - a, :])

    # -- backward exchanges -----------------------------------------------------------------
    def _expand_rows(self, plan: LayerSplit, sub, dy: np.ndarray) -> np.ndarray:
        """LCN's backward takes dy for its whole block: zero on the halo rows (others own them)."""
        if not isinstance(sub, LCN):
            return dy
        (r0, r1), (a, b) = plan.out_split[1][self.part], plan.need[self.part]
        full = np.zeros(dy.shape[:2] + (b - a, dy.shape[3]), self.dtype)
        full[:, :, r0 - a : r1 - a, :] = dy
        return full

    def _return_gradient(self, plan: LayerSplit, dx: np.ndarray) -> np.ndarray:
        """d loss / d (own part of the previous activation): own share plus what others send back."""
        kind, bounds = plan.in_split
        mine = bounds[self.part]
        if plan.kind == "dense":  # dx (B, D): everyone's partial for everything
            full = dx.reshape((len(dx),) + self.network.layers[plan.index - 1].out_shape)
            axis = 2 if kind == "rows" else 1
            sends = {q: np.ascontiguousarray(_take(full, axis, bounds[q])) for q in range(self.parts) if q != self.part}
            shapes = {q: _with_axis(full.shape, axis, mine) for q in range(self.parts) if q != self.part}
            total = np.array(_take(full, axis, mine))
            for piece in self._exchange(sends, shapes).values():
                total += piece
            return total
        a, b = plan.need[self.part]
        sends = {}
        for q in range(self.parts):
            lo, hi = _overlap(bounds[q], (a, b))
            if q != self.part and hi > lo:
                sends[q] = np.ascontiguousarray(dx[:, :, lo - a : hi - a, :])
        shapes = {}
        for q in range(self.parts):
            lo, hi = _overlap(mine, plan.need[q])
            if q != self.part and hi > lo:
                shapes[q] = dx.shape[:2] + (hi - lo, dx.shape[3])
        total = np.zeros(dx.shape[:2] + (mine[1] - mine[0], dx.shape[3]), self.dtype)
        lo, hi = _overlap(mine, (a, b))
        if hi > lo:
            total[:, :, lo - mine[0] : hi - mine[0], :] += dx[:, :, lo - a : hi - a, :]
        for q, piece in self._exchange(sends, shapes).items():
            lo, hi = _overlap(mine, plan.need[q])
            total[:, :, lo - mine[0] : hi - mine[0], :] += piece
        return total

    def _exchange(self, sends: dict, shapes: dict) -> dict:
        sends = {q: a for q, a in sends.items() if a.size}
        shapes = {q: s for q, s in shapes.items() if int(np.prod(s))}
        self.bytes_sent += sum(a.nbytes for a in sends.values())
        return self.ex.exchange(sends, shapes)


def _with_axis(shape: tuple, axis: int, bounds: tuple[int, int]) -> tuple:
    return shape[:axis] + (bounds[1] - bounds[0],) + shape[axis + 1 :]


def _take(array: np.ndarray, axis: int, bounds: tuple[int, int]) -> np.ndarray:
    index = [slice(None)] * array.ndim
    index[axis] = slice(*bounds)
    return array[tuple(index)]


def _put(array: np.ndarray, axis: int, bounds: tuple[int, int], piece: np.ndarray) -> None:
    _take(array, axis, bounds)[...] = piece
