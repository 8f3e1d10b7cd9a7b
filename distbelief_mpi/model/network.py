"""A feed-forward network over one flat parameter vector: build, init, loss + gradient, eval.

    net = build_network(specs, input_shape=(1, 28, 28), n_classes=10)
    params = net.init_params(seed=0); grad = np.empty_like(params)
    loss, n_correct = net.loss_and_grad(params, x, y, grad)   # grad = d(mean loss)/d params

Not thread-safe: layers reuse their work buffers between calls.
"""

import math
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from ..kernels import softmax_xent
from .layers import Layer, SoftmaxOutput
from .registry import layer_class
from .spec import LayerSpec, spec_problems, spec_values

EVAL_BUDGET_BYTES = 256 << 20  # activations an evaluation batch may hold (a big model's rank stays small)
MAX_EVAL_BATCH = 1000


def forward_bytes(layers, n_classes: int, partitioned: bool) -> int:
    """Bytes per example an evaluation keeps: each layer's output (max pooling's argmax and LCN's
    divisor too), a partition's assembled inputs and gathered logits, and the dlogits."""
    total = 4 * n_classes * (2 if partitioned else 1)
    for layer in layers:
        total += 4 * math.prod(layer.out_shape) + (4 * math.prod(layer.in_shape) if partitioned else 0)
        total += layer.kept_bytes()
    return total


def evaluation_batch(layers, n_classes: int, partitioned: bool = False) -> int:
    """Examples per evaluation batch: MAX_EVAL_BATCH, fewer when their activations would pass
    EVAL_BUDGET_BYTES (the paper's image model keeps 1.8 MB per example and partition)."""
    return max(1, min(MAX_EVAL_BATCH, EVAL_BUDGET_BYTES // max(1, forward_bytes(layers, n_classes, partitioned))))


def build_network(
    layers: Sequence[LayerSpec], input_shape: tuple[int, ...], n_classes: int, dtype=np.float32, source: str = "model"
) -> "Network":
    """Build the hidden layers then a dense softmax output over n_classes.

    Raises ConfigError(source) listing every problem found (source: the job file, for messages). After a layer that does
    not fit, later layers' geometry cannot be known and is not checked.
    """
    input_shape = tuple(int(s) for s in input_shape)
    problems = []
    if len(input_shape) not in (1, 3) or min(input_shape, default=0) < 1:
        problems.append(f"model: input shape {input_shape} must be (D,) or (C, H, W) with sizes >= 1")
    if n_classes < 2:
        problems.append(f"model: n_classes must be >= 2, got {n_classes}")
    if problems:
        raise ConfigError(source=source, problems=problems)
    built: list[Layer] = []
    shape: tuple[int, ...] | None = tuple(input_shape)
    for i, spec in enumerate(layers):
        where = f"model.layers[{i}]"
        cls = layer_class(spec.type)  # the type's class, looked up once here: steps call its methods
        bad = spec_problems(spec.type, spec_values(spec), where)  # specs built in code skip parse_layer
        if bad:
            problems += bad
            shape = None  # the output shape is unknowable from here
            continue
        if shape is None or cls is None:
            continue
        problem = cls.input_problem(spec, shape, where)
        if problem:
            problems.append(problem)
            if len(shape) == 3:  # geometry misfit: the output shape is unknowable from here
                shape = None
            continue
        built.append(cls.from_spec(spec, shape, dtype))
        shape = built[-1].out_shape
    if problems:
        raise ConfigError(source=source, problems=problems)
    built.append(SoftmaxOutput(shape, n_classes, dtype))
    return Network(built, input_shape, n_classes, dtype)


class Network:
    """Hidden layers then the output layer, over one flat parameter vector of `dtype`."""

    def __init__(self, layers: list, input_shape: tuple, n_classes: int, dtype):
        self.layers, self.input_shape, self.n_classes = layers, tuple(input_shape), n_classes
        self.dtype = np.dtype(dtype)
        self.param_slices, start = [], 0
        for layer in layers:
            self.param_slices.append(slice(start, start + layer.n_params))
            start += layer.n_params
        self.n_params = start
        self._dlogits: dict = {}

    def init_params(self, seed: int) -> np.ndarray:
        """(n_params,) initial weights, deterministic in seed (the whole vector: one rank's own model)."""
        params = np.empty(self.n_params, dtype=self.dtype)
        self.init_range(seed, 0, self.n_params, params)
        return params

    def init_range(self, seed: int, start: int, stop: int, out: np.ndarray) -> None:
        """out (stop - start,) <- elements [start, stop) of init_params(seed), drawn alone: each
        element depends on (seed, its layer, its index in the layer) only (model/init.py)."""
        for index, (layer, block) in enumerate(zip(self.layers, self.param_slices)):
            lo, hi = max(start, block.start), min(stop, block.stop)
            if lo < hi:
                layer.init_range(seed, index, lo - block.start, hi - block.start, out[lo - start : hi - start])

    def _check(self, params, x, y=None):
        if params.shape != (self.n_params,) or params.dtype != self.dtype:
            raise ValueError(f"params must be ({self.n_params},) {self.dtype}, got {params.shape} {params.dtype}")
        x = np.ascontiguousarray(x, dtype=self.dtype)  # no copy when it already is
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"x must be (B, {', '.join(map(str, self.input_shape))}), got {x.shape}")
        if y is not None:
            y = np.asarray(y)
            if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
                raise ValueError(f"y must be ({x.shape[0]},) integer labels, got {y.shape} {y.dtype}")
        return x, y

    def _forward(self, params, x):
        caches = []
        for layer, block in zip(self.layers, self.param_slices):
            x, cache = layer.forward(params[block], x)
            caches.append(cache)
        return x, caches

    def _dlogits_buffer(self, batch: int) -> np.ndarray:
        buf = self._dlogits.get(batch)
        if buf is None:
            if len(self._dlogits) > 8:
                self._dlogits.clear()
            buf = self._dlogits[batch] = np.empty((batch, self.n_classes), dtype=self.dtype)
        return buf

    def loss_and_grad(self, params, x, y, grad) -> tuple[float, int]:
        """grad (n_params,) <- d(mean loss)/d params; return (mean loss, n correct).
        An empty batch gives loss 0.0, 0 correct and a zero gradient."""
        x, y = self._check(params, x, y)
        if grad.shape != params.shape or grad.dtype != self.dtype:
            raise ValueError("grad must have the shape and dtype of params")
        batch = x.shape[0]
        logits, caches = self._forward(params, x)
        dy = self._dlogits_buffer(batch)
        loss_sum, n_correct = softmax_xent(logits, y, dy, 1.0 / batch if batch else 0.0)
        for i in range(len(self.layers) - 1, -1, -1):
            block = self.param_slices[i]
            dy = self.layers[i].backward(params[block], caches[i], dy, grad[block], need_dx=i > 0)
        return (loss_sum / batch if batch else 0.0), int(n_correct)

    def predict_logits(self, params, x) -> np.ndarray:
        """(B, n_classes) logits, a fresh array."""
        x, _ = self._check(params, x)
        return self._forward(params, x)[0].copy()

    def evaluate(self, params, x, y, batch_size: int | None = None, on_batch=None) -> tuple[float, float]:
        """(mean loss, accuracy in [0, 1]) over all of x, in batches (default: evaluation_batch);
        (nan, nan) when x is empty. on_batch(): called before each batch (a watchdog's beat: a
        big model's evaluation may take longer than the watchdog allows one silent stretch)."""
        batch_size = batch_size or evaluation_batch(self.layers, self.n_classes)
        total, correct, n = 0.0, 0, len(x)
        for start in range(0, n, batch_size):
            if on_batch is not None:
                on_batch()
            xb, yb = self._check(params, x[start : start + batch_size], y[start : start + batch_size])
            logits, _ = self._forward(params, xb)
            loss_sum, n_correct = softmax_xent(logits, yb, self._dlogits_buffer(len(xb)), 0.0)
            total, correct = total + loss_sum, correct + n_correct
        if n == 0:
            return float("nan"), float("nan")
        return total / n, correct / n

    def describe(self) -> list[str]:
        """One line per layer: type, details, output shape, parameter count."""
        return [layer.describe() for layer in self.layers]
