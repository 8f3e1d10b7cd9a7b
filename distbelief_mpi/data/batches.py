"""Per-replica data: which examples a model replica owns, and its minibatch stream.

Each data-parallel replica (DistBelief's "model replica") trains on its own contiguous
part of the training set, read with hdf5.read_split(path, "train", start, stop) for
(start, stop) = replica_slice(n_train, replica_id, n_replicas).
"""

import numpy as np


def replica_slice(n_examples: int, replica_id: int, n_replicas: int) -> tuple[int, int]:
    """Rows [start, stop) of replica `replica_id`: contiguous, disjoint, covering all
    n_examples; sizes differ by at most one (the first n % n_replicas get one more)."""
    if n_replicas < 1 or not 0 <= replica_id < n_replicas:
        raise ValueError(f"replica_id {replica_id} not in [0, {n_replicas})")
    if n_examples < 0:
        raise ValueError(f"n_examples must be >= 0, got {n_examples}")
    base, extra = divmod(n_examples, n_replicas)
    start = replica_id * base + min(replica_id, extra)
    return start, start + base + (1 if replica_id < extra else 0)


class BatchStream:
    """Endless shuffled minibatches over one replica's in-memory examples.

    x: (n, *input_shape) float32, y: (n,) int32. Order is a fresh permutation each epoch
    from numpy Generator seeded with (seed, replica_id), so a run is reproducible and
    replicas do not walk their data in lock-step.

    Epoch boundaries WRAP: a batch that runs past the end of an epoch is completed with
    the first examples of the next epoch's permutation. Every batch therefore has exactly
    batch_size examples and every example is seen exactly once per epoch (nothing is
    dropped). next_batch() returns reused buffers: use or copy them before the next call.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, replica_id: int = 0):
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need equal, non-zero lengths, got x {len(x)} and y {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.n_examples = len(x)
        self.examples_seen = 0
        self._seed = (int(seed), int(replica_id))
        self._rng = np.random.default_rng(self._seed)
        self._epoch_rng_state = self._rng.bit_generator.state  # to redraw this epoch's order
        self._order = self._rng.permutation(self.n_examples)
        self._pos = 0  # next index into _order
        self._idx = np.empty(self.batch_size, dtype=np.intp)
        self._x_batch = np.empty((self.batch_size, *x.shape[1:]), dtype=x.dtype)
        self._y_batch = np.empty(self.batch_size, dtype=y.dtype)

    @property
    def epoch(self) -> float:
        """Completed epochs as a float, e.g. 1.5 after one and a half passes."""
        return self.examples_seen / self.n_examples

    def _fill_indices(self):
        filled = 0
        while filled < self.batch_size:
            if self._pos == self.n_examples:  # epoch boundary: reshuffle
                self._epoch_rng_state = self._rng.bit_generator.state
                self._order = self._rng.permutation(self.n_examples)
                self._pos = 0
            take = min(self.batch_size - filled, self.n_examples - self._pos)
            self._idx[filled : filled + take] = self._order[self._pos : self._pos + take]
            self._pos += take
            filled += take

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(x_batch (batch_size, *input_shape), y_batch (batch_size,)), reused buffers."""
        self._fill_indices()
        np.take(self.x, self._idx, axis=0, out=self._x_batch)
        np.take(self.y, self._idx, axis=0, out=self._y_batch)
        self.examples_seen += self.batch_size
        return self._x_batch, self._y_batch

    def state(self) -> dict:
        """Everything needed to continue the exact same batch sequence (JSON-serialisable)."""
        return {"epoch_rng_state": self._epoch_rng_state, "pos": self._pos, "examples_seen": self.examples_seen}

    def restore(self, state: dict) -> None:
        """Continue exactly where `state()` was taken (same data, seed and batch size)."""
        self._rng.bit_generator.state = state["epoch_rng_state"]
        self._epoch_rng_state = state["epoch_rng_state"]
        self._order = self._rng.permutation(self.n_examples)
        self._pos, self.examples_seen = int(state["pos"]), int(state["examples_seen"])

    def fast_forward(self, examples_seen: int) -> None:
        """Continue counting from examples_seen with a fresh order drawn from (seed,
        replica, examples_seen): for resuming when the exact state was not saved."""
        self._rng = np.random.default_rng([*self._seed, int(examples_seen)])
        self._epoch_rng_state = self._rng.bit_generator.state
        self._order, self._pos = self._rng.permutation(self.n_examples), 0
        self.examples_seen = int(examples_seen)

    def close(self) -> None:
        """Nothing to release (the interface matches prefetch.ChunkedBatchStream)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def open_replica_stream(
    path, n_train: int, replica_id: int, n_replicas: int, batch_size: int, seed: int, chunk_examples: int = 0
):
    """This replica's minibatches from its own part of /train: chunk_examples = 0 loads the part
    into memory (BatchStream); N > 0 streams it N rows at a time, reading the next chunk in a
    background thread while the current one trains (prefetch.ChunkedBatchStream)."""
    from .hdf5 import read_split
    from .prefetch import ChunkedBatchStream

    start, stop = replica_slice(n_train, replica_id, n_replicas)
    if chunk_examples:
        return ChunkedBatchStream(path, start, stop, batch_size, seed, replica_id, chunk_examples)
    x, y = read_split(path, "train", start, stop)
    return BatchStream(x, y, batch_size, seed, replica_id)
