"""Softmax cross-entropy over logits (B, K): loss, correct count and d loss / d logits, one pass.

Threads: Numba `prange` over rows once B * K reaches PARALLEL_MIN; each row's loss lands in its own
slot and the slots are summed in row order afterwards, so the loss is bitwise the same on any
thread count.
"""

import numpy as np
from numba import njit, prange

from .elementwise import PARALLEL_MIN


@njit(cache=True, nogil=True, parallel=True)
def softmax_xent(logits, labels, dlogits, scale):
    """Return (sum over rows of -log softmax(logits)[label], number of rows whose argmax == label).

    logits (B, K), labels (B,) ints in [0, K), dlogits (B, K) <- (softmax - onehot) * scale
    (pass scale = 1 / B for the gradient of the mean loss). The loss is accumulated in float64.
    Ties in the argmax go to the lowest index. Raises ValueError on a label out of range.
    """
    b, k = logits.shape
    for i in range(b):  # checked before any thread starts: no exception inside the parallel loop
        if labels[i] < 0 or labels[i] >= k:
            raise ValueError("softmax_xent: a label is outside [0, n_classes)")
    losses = np.empty(b, dtype=np.float64)
    correct = np.empty(b, dtype=np.int64)
    if b * k < PARALLEL_MIN:
        for i in range(b):
            losses[i], correct[i] = _softmax_row_(logits[i], labels[i], dlogits[i], scale)
    else:
        for i in prange(b):
            losses[i], correct[i] = _softmax_row_(logits[i], labels[i], dlogits[i], scale)
    total = 0.0
    n_correct = 0
    for i in range(b):
        total += losses[i]
        n_correct += correct[i]
    return total, n_correct


@njit(cache=True, nogil=True)
def _softmax_row_(logits, label, dlogits, scale):
    """One row: dlogits (K,) <- (softmax - onehot) * scale; returns (float64 loss, 1 if argmax == label)."""
    k = logits.shape[0]
    best = 0
    top = logits[0]
    for j in range(1, k):
        if logits[j] > top:
            top = logits[j]
            best = j
    denom = 0.0
    for j in range(k):
        e = np.exp(logits[j] - top)
        dlogits[j] = e
        denom += e
    inv = scale / denom
    for j in range(k):
        dlogits[j] *= inv
    dlogits[label] -= scale
    return np.log(denom) - (logits[label] - top), 1 if best == label else 0
