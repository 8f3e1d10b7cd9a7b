"""Streaming minibatches read from the dataset file chunk by chunk, with prefetching.

ChunkedBatchStream is a drop-in alternative to batches.BatchStream (same public
interface: n_examples, batch_size, examples_seen, epoch, next_batch, state, restore,
fast_forward) for a replica part too big to hold in memory. Instead of reading rows
[start, stop) of /train once with hdf5.read_split, it keeps at most two pieces of it:

  * The part is cut into contiguous "chunks" of chunk_examples rows (the last one may be
    shorter): chunk c is rows [start + c*C, min(start + (c+1)*C, stop)).
  * Each epoch visits every chunk once, in an order drawn from a numpy Generator seeded
    with (seed, replica_id, origin, epoch); inside chunk c the rows are served in a
    permutation seeded with (seed, replica_id, origin, epoch, c). `origin` is 0, or the
    examples_seen given to the last fast_forward(). Shuffling is therefore two-level
    (chunk order x row order inside a chunk): coarser than BatchStream's global
    permutation (a batch holds rows of at most two chunks) but needing only one chunk
    in memory.
  * A daemon thread reads the NEXT chunk with read_split while batches are served from
    the current one, so with a chunk read faster than it is consumed training never
    waits on the disk.

Every batch is full and every example is seen exactly once per epoch: a batch that runs
past the end of a chunk is completed from the next chunk, and past the last chunk of an
epoch from the first chunk of the next epoch's order (as BatchStream wraps epochs).

Because every order is a pure function of (seed, replica_id, origin, epoch, chunk), the
position in the sequence is fully described by (origin, examples_seen): state() is just
those two integers, and restore() recomputes the epoch, chunk and row position from them
and restarts the reader there (re-reading the current chunk).

Memory: a semaphore with two permits bounds the chunks alive at once. The reader takes a
permit before it starts reading a chunk; the consumer returns it when it drops a used-up
chunk. So at most two chunks are resident: the one being served and the one being read
or waiting (a queue of size 1 alone would allow three: served, queued, and being read).
Each chunk is (rows, *input_shape) float32 plus (rows,) int32 labels and (rows,) intp
permutation; read_split briefly holds the stored (e.g. uint8) copy too while converting.

Errors: any exception in the reader (e.g. DatasetError for a damaged file) ends the
reader; the next next_batch() call re-raises that same exception object (original type
and message) in the calling thread, as does every later call until restore() or
fast_forward() starts a new reader.
"""

import queue
import threading

import numpy as np

from distbelief_mpi.data.hdf5 import read_info, read_split

# Name prefix of the reader threads (tests look for leftovers by it).
THREAD_NAME = "ChunkedBatchStream-reader"
# Domain tags keep the chunk-order and row-permutation seed sequences apart.
_ORDER_TAG, _ROWS_TAG = 0, 1


class _Reader:
    """One background reader: yields chunks in sequence order from (epoch, k) onwards.

    Items put on `out` are (chunk_id, x, y, perm) or ("error", exception). A fresh
    _Reader (with its own queue, permits and stop flag) is made on every (re)start, so an
    old reader's leftovers can never reach the new sequence.
    """

    def __init__(self, stream: "ChunkedBatchStream", epoch: int, k: int):
        self.out: queue.SimpleQueue = queue.SimpleQueue()  # never blocks: permits bound it
        self.permits = threading.Semaphore(2)  # chunks alive: being served + read ahead
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run,
            args=(stream._describe(), epoch, k),
            name=f"{THREAD_NAME}-{stream._replica_id}",
            daemon=True,
        )
        self.thread.start()

    def _run(self, desc, epoch, k):
        # desc is a plain tuple, not the stream, so the thread does not keep the stream
        # alive (a dropped stream can still be garbage-collected and close itself).
        path, bounds, key = desc
        try:
            while True:
                order = _chunk_order(key, epoch, len(bounds))
                while k < len(bounds):
                    self.permits.acquire()  # blocks (no spinning) until a chunk is freed
                    if self.stop.is_set():
                        return
                    cid = int(order[k])
                    lo, hi = bounds[cid]
                    x, y = read_split(path, "train", lo, hi)  # (hi-lo, *shape) f32, (hi-lo,) i32
                    perm = _row_perm(key, epoch, cid, hi - lo)
                    if self.stop.is_set():
                        return
                    self.out.put((cid, x, y, perm))
                    del x, y, perm  # the consumer owns the chunk now
                    k += 1
                epoch, k = epoch + 1, 0
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, re-raised there
            self.error = e
            self.out.put(("error", e))

    def close(self):
        self.stop.set()
        self.permits.release()  # wake a reader waiting for a permit so it sees `stop`
        self.thread.join()  # a read in progress finishes first (read_split can't be cut)


def _chunk_order(key: tuple, epoch: int, n_chunks: int) -> np.ndarray:
    """(n_chunks,) permutation: the order chunks are visited in this epoch."""
    return np.random.default_rng([*key, epoch, _ORDER_TAG]).permutation(n_chunks)


def _row_perm(key: tuple, epoch: int, chunk_id: int, rows: int) -> np.ndarray:
    """(rows,) permutation: the order a chunk's rows are served in this epoch."""
    return np.random.default_rng([*key, epoch, _ROWS_TAG, chunk_id]).permutation(rows)


class ChunkedBatchStream:
    """Endless shuffled minibatches over rows [start, stop) of /train in the HDF5 file at
    `path`, read chunk_examples rows at a time by a prefetching thread.

    next_batch() -> (x (batch_size, *input_shape) float32, y (batch_size,) int32), reused
    buffers: use or copy them before the next call. Call close() (or use `with`) to stop
    the reader thread.
    """

    def __init__(
        self, path, start: int, stop: int, batch_size: int, seed: int, replica_id: int = 0, chunk_examples: int = 65536
    ):
        info = read_info(path)  # cheap: checks the file and gives shapes, reads no data
        if not 0 <= start < stop <= info.n_train:
            raise ValueError(f"rows {start}:{stop} must be a non-empty range within /train's {info.n_train} rows")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if chunk_examples < 1:
            raise ValueError(f"chunk_examples must be >= 1, got {chunk_examples}")
        self.path = str(path)
        self.start, self.stop = int(start), int(stop)
        self.batch_size = int(batch_size)
        self.chunk_examples = int(chunk_examples)
        self.n_examples = self.stop - self.start
        self.examples_seen = 0
        self._seed, self._replica_id = int(seed), int(replica_id)
        # bounds[c] = absolute rows (lo, hi) of chunk c; sizes[c] = hi - lo.
        self._bounds = [
            (lo, min(lo + self.chunk_examples, self.stop)) for lo in range(self.start, self.stop, self.chunk_examples)
        ]
        self._sizes = np.array([hi - lo for lo, hi in self._bounds], dtype=np.int64)
        self._origin = 0  # examples_seen at which the current order started (fast_forward)
        self._x_batch = np.empty((self.batch_size, *info.input_shape), dtype=np.float32)
        self._y_batch = np.empty(self.batch_size, dtype=np.int32)
        self._reader: _Reader | None = None
        self._chunk: tuple | None = None  # (chunk_id, x, y, perm) being served, or None
        self._pos = 0  # next index into the served chunk's perm
        self._skip = 0  # rows of the first chunk after a (re)start already served
        self._closed = False
        self._start_reader()

    # -- public interface (as BatchStream) -----------------------------------------------
    @property
    def epoch(self) -> float:
        """Completed epochs as a float, e.g. 1.5 after one and a half passes."""
        return self.examples_seen / self.n_examples

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(x_batch (batch_size, *input_shape) float32, y_batch (batch_size,) int32),
        reused buffers. Re-raises a reader failure (e.g. DatasetError) as it was raised."""
        if self._closed:
            raise RuntimeError("next_batch() on a closed ChunkedBatchStream")
        error = self._reader.error if self._reader is not None else None
        if error is not None:  # fail at once, not only when the chunk is due
            raise error
        filled = 0
        while filled < self.batch_size:
            if self._chunk is None or self._pos == len(self._chunk[3]):
                self._chunk = self._next_chunk()  # wraps chunk and epoch boundaries mid-batch
            _, cx, cy, perm = self._chunk
            take = min(self.batch_size - filled, len(perm) - self._pos)
            idx = perm[self._pos : self._pos + take]
            np.take(cx, idx, axis=0, out=self._x_batch[filled : filled + take])
            np.take(cy, idx, axis=0, out=self._y_batch[filled : filled + take])
            self._pos += take
            filled += take
        self.examples_seen += self.batch_size
        return self._x_batch, self._y_batch

    def state(self) -> dict:
        """Everything needed to continue the exact same batch sequence (JSON-serialisable).
        The sequence is a function of (origin, examples_seen), so that is all it holds,
        plus the layout it is only valid for (checked by restore())."""
        return {
            "kind": "chunked",
            "examples_seen": self.examples_seen,
            "origin": self._origin,
            "n_examples": self.n_examples,
            "chunk_examples": self.chunk_examples,
        }

    def restore(self, state: dict) -> None:
        """Continue exactly where `state()` was taken (same file part, seed, replica and
        chunk size; batch size may differ). Restarts the reader, re-reading the chunk
        the position falls in."""
        if state.get("kind") != "chunked":
            raise ValueError("not a ChunkedBatchStream state (a BatchStream one?)")
        for field in ("n_examples", "chunk_examples"):
            if int(state[field]) != getattr(self, field):
                raise ValueError(f"state has {field}={state[field]}, this stream has {getattr(self, field)}")
        self._origin = int(state["origin"])
        self.examples_seen = int(state["examples_seen"])
        self._start_reader()

    def fast_forward(self, examples_seen: int) -> None:
        """Continue counting from examples_seen with a fresh order drawn from (seed,
        replica, examples_seen): for resuming when the exact state was not saved."""
        self._origin = self.examples_seen = int(examples_seen)
        self._start_reader()

    def close(self) -> None:
        """Stop and join the reader thread and drop the chunks. Idempotent."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._chunk = None
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown; the thread is a daemon
            pass

    # -- internals -----------------------------------------------------------------------
    def _describe(self) -> tuple:
        """What the reader needs: (path, chunk bounds, seed key)."""
        return self.path, list(self._bounds), (self._seed, self._replica_id, self._origin)

    def _locate(self) -> tuple[int, int, int]:
        """(epoch since origin, index k into that epoch's chunk order, row offset in that
        chunk) of the next example to serve, from examples_seen alone."""
        epoch, r = divmod(self.examples_seen - self._origin, self.n_examples)
        order = _chunk_order((self._seed, self._replica_id, self._origin), epoch, len(self._bounds))
        ends = np.cumsum(self._sizes[order])  # ends[k] = examples in chunks order[:k+1]
        k = int(np.searchsorted(ends, r, side="right"))  # first chunk ending after r
        return epoch, k, r - (int(ends[k - 1]) if k else 0)

    def _start_reader(self) -> None:
        if self._closed:
            raise RuntimeError("ChunkedBatchStream is closed")
        if self._reader is not None:
            self._reader.close()
        self._chunk, self._pos = None, 0
        if self.examples_seen < self._origin:
            raise ValueError(f"examples_seen {self.examples_seen} < origin {self._origin}")
        epoch, k, self._skip = self._locate()
        self._reader = _Reader(self, epoch, k)

    def _next_chunk(self) -> tuple:
        """Drop the used-up chunk (returning its permit) and wait for the next one; returns it."""
        reader = self._reader
        assert reader is not None  # _start_reader runs in __init__ and after every seek
        if self._chunk is not None:
            self._chunk = None
            reader.permits.release()  # the reader may start reading the chunk after next
        item = reader.out.get()  # blocks without spinning
        if item[0] == "error":
            raise item[1]
        self._pos, self._skip = self._skip, 0
        return item
