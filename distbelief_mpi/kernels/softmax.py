"""Softmax cross-entropy over logits (B, K): loss, correct count and d loss / d logits, one pass."""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def softmax_xent(logits, labels, dlogits, scale):
    """Return (sum over rows of -log softmax(logits)[label], number of rows whose argmax == label).

    logits (B, K), labels (B,) ints in [0, K), dlogits (B, K) <- (softmax - onehot) * scale
    (pass scale = 1 / B for the gradient of the mean loss). The loss is accumulated in float64.
    Ties in the argmax go to the lowest index. Raises ValueError on a label out of range.
    """
    b, k = logits.shape
    total = 0.0
    n_correct = 0
    for i in range(b):
        label = labels[i]
        if label < 0 or label >= k:
            raise ValueError("softmax_xent: a label is outside [0, n_classes)")
        best = 0
        top = logits[i, 0]
        for j in range(1, k):
            if logits[i, j] > top:
                top = logits[i, j]
                best = j
        if best == label:
            n_correct += 1
        denom = 0.0
        for j in range(k):
            e = np.exp(logits[i, j] - top)
            dlogits[i, j] = e
            denom += e
        total += np.log(denom) - (logits[i, label] - top)
        inv = scale / denom
        for j in range(k):
            dlogits[i, j] *= inv
        dlogits[i, label] -= scale
    return total, n_correct
