"""ChunkedBatchStream: coverage per epoch, part bounds, determinism, state/restore,
fast_forward, reader errors and thread shutdown, on small HDF5 files.

Labels identify rows: y[i] = i (n_classes = n_train), so every served label says which
file row it came from, and x[i] is checked against the file's row i.
"""

import json
import threading

import h5py
import numpy as np
import pytest

from distbelief_mpi.data.hdf5 import write_dataset
from distbelief_mpi.data.prefetch import THREAD_NAME, ChunkedBatchStream
from distbelief_mpi.errors import DatasetError

N_TRAIN = 200


def write_rows(path, n_train=N_TRAIN, shape=(1, 2, 3), dtype=np.uint8, x_scale=1 / 255):
    """A file whose /train/y[i] = i; returns x_train as the trainer sees it (scaled)."""
    rng = np.random.default_rng(0)
    if dtype == np.uint8:
        x = rng.integers(0, 256, (n_train, *shape), dtype=np.uint8)
    else:
        x = rng.standard_normal((n_train, *shape)).astype(np.float32)
    write_dataset(
        path,
        name="rows",
        source="test",
        n_classes=n_train,
        input_shape=shape,
        x_train=x,
        y_train=np.arange(n_train),
        x_test=x[:3],
        y_test=np.arange(3),
        x_scale=x_scale,
        synthetic=True,
    )
    return x.astype(np.float32) * np.float32(x_scale)


@pytest.fixture
def rows_file(tmp_path):
    path = tmp_path / "rows.h5"
    return path, write_rows(path)


def take(stream, n_batches, x_rows=None):
    """Labels of the next n_batches batches, (n_batches * batch_size,); checks x too."""
    out = []
    for _ in range(n_batches):
        x, y = stream.next_batch()
        assert x.shape == (stream.batch_size, 1, 2, 3) and x.dtype == np.float32
        assert y.shape == (stream.batch_size,) and y.dtype == np.int32
        if x_rows is not None:
            np.testing.assert_array_equal(x, x_rows[y])
        out.append(y.copy())
    return np.concatenate(out)


def no_reader_threads():
    return not any(t.name.startswith(THREAD_NAME) and t.is_alive() for t in threading.enumerate())


# -- coverage --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "start, stop, chunk, batch",
    [
        (0, 200, 50, 7),  # chunk divides the part, batch divides neither
        (0, 200, 64, 7),  # last chunk shorter (8 rows)
        (13, 170, 40, 9),  # offset part, uneven chunks
        (13, 170, 1000, 5),  # one chunk bigger than the part
        (5, 35, 1, 4),  # one-row chunks
        (0, 60, 16, 64),  # batch bigger than a chunk and than the part
    ],
)
def test_every_example_once_per_epoch(rows_file, start, stop, chunk, batch):
    path, x_rows = rows_file
    n = stop - start
    epochs = 4
    with ChunkedBatchStream(path, start, stop, batch, seed=3, chunk_examples=chunk) as s:
        assert s.n_examples == n and s.batch_size == batch
        labels = take(s, -(-epochs * n // batch), x_rows)
        assert s.examples_seen == len(labels)
        assert s.epoch == pytest.approx(len(labels) / n)
    # The part is respected and each epoch is a permutation of it.
    for e in range(epochs):
        np.testing.assert_array_equal(np.sort(labels[e * n : (e + 1) * n]), np.arange(start, stop))
    assert labels[:n].tolist() != list(range(start, stop))  # shuffled
    assert not np.array_equal(labels[:n], labels[n : 2 * n])  # a new order each epoch


def test_scaled_float_and_uint8_rows_match_file(tmp_path):
    path = tmp_path / "f.h5"
    x_rows = write_rows(path, dtype=np.float32, x_scale=0.5)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["/train/x"][:] * np.float32(0.5), x_rows)
    with ChunkedBatchStream(path, 10, 190, 11, seed=0, chunk_examples=32) as s:
        take(s, 40, x_rows)  # asserts x == file rows for the returned labels


def test_chunks_are_contiguous_runs_of_rows(rows_file):
    path, _ = rows_file
    with ChunkedBatchStream(path, 0, 200, 25, seed=1, chunk_examples=50) as s:
        labels = take(s, 8)  # exactly one epoch, 50 rows per chunk, 2 batches per chunk
    chunks = labels.reshape(4, 50) // 50
    assert all(len(set(c)) == 1 for c in chunks)  # each chunk comes from one block
    assert sorted(chunks[:, 0]) == [0, 1, 2, 3]


# -- determinism and resuming -----------------------------------------------------------
def test_same_sequence_twice_and_seed_replica_matter(rows_file):
    path, _ = rows_file
    args = (path, 0, 200, 7)

    def run(seed, replica):
        with ChunkedBatchStream(*args, seed=seed, replica_id=replica, chunk_examples=30) as s:
            return take(s, 90)

    first = run(5, 0)
    np.testing.assert_array_equal(first, run(5, 0))
    assert not np.array_equal(first, run(6, 0))
    assert not np.array_equal(first, run(5, 1))


@pytest.mark.parametrize(
    "after",
    [
        3,  # mid-chunk (21 rows into a 30-row chunk)
        30,  # 210 rows: at a chunk boundary (210 = 7 chunks of 30) and mid-epoch
        40,  # 280 rows: mid-chunk, second epoch
        60,  # 420 rows: epoch boundary (2 x 210) and a chunk boundary
    ],
)
def test_state_restore_continues_exactly(tmp_path, after):
    path = tmp_path / "r.h5"
    x_rows = write_rows(path, n_train=210)
    make = lambda: ChunkedBatchStream(path, 0, 210, 7, seed=2, chunk_examples=30)  # noqa: E731
    with make() as ref:
        expected = take(ref, after + 50)
    with make() as s:
        take(s, after)
        state = json.loads(json.dumps(s.state()))  # must survive a checkpoint manifest
        continued = take(s, 20)
    np.testing.assert_array_equal(continued, expected[after * 7 : (after + 20) * 7])
    with make() as fresh:  # restore into a new stream (a resumed job)
        fresh.restore(state)
        assert fresh.examples_seen == after * 7
        np.testing.assert_array_equal(take(fresh, 50, x_rows), expected[after * 7 :])
    with make() as s:  # and into the same stream, after it has moved on
        take(s, after + 11)
        s.restore(state)
        np.testing.assert_array_equal(take(s, 50), expected[after * 7 :])


def test_restore_rejects_other_layouts(rows_file):
    path, _ = rows_file
    with ChunkedBatchStream(path, 0, 200, 8, seed=0, chunk_examples=50) as s:
        state = s.state()
        with pytest.raises(ValueError, match="chunk_examples"):
            with ChunkedBatchStream(path, 0, 200, 8, seed=0, chunk_examples=40) as other:
                other.restore(state)
        with pytest.raises(ValueError, match="BatchStream"):
            s.restore({"epoch_rng_state": {}, "pos": 0, "examples_seen": 0})


def test_fast_forward_counts_epochs(rows_file):
    path, x_rows = rows_file
    n = 160
    with ChunkedBatchStream(path, 20, 180, 8, seed=4, replica_id=2, chunk_examples=48) as s:
        take(s, 3)
        s.fast_forward(int(2.5 * n))
        assert s.examples_seen == 400 and s.epoch == 2.5
        labels = take(s, 2 * n // 8, x_rows)  # two more epochs from the new origin
        assert s.epoch == 4.5
        for e in range(2):
            np.testing.assert_array_equal(np.sort(labels[e * n : (e + 1) * n]), np.arange(20, 180))
    with ChunkedBatchStream(path, 20, 180, 8, seed=4, replica_id=2, chunk_examples=48) as t:
        t.fast_forward(400)  # same (seed, replica, examples_seen): same order
        np.testing.assert_array_equal(take(t, 40), labels)


# -- errors and shutdown ---------------------------------------------------------------
def test_file_overwritten_with_garbage_raises_dataset_error(rows_file):
    path, _ = rows_file
    s = ChunkedBatchStream(path, 0, 200, 10, seed=0, chunk_examples=40)
    try:
        take(s, 1)
        path.write_bytes(b"not an hdf5 file " * 100)  # damaged after construction
        with pytest.raises(DatasetError) as caught:
            take(s, 3 * 20)  # at most two chunks were read before the damage
        assert str(path) in str(caught.value)
        with pytest.raises(DatasetError):  # the stream stays failed
            s.next_batch()
    finally:
        s.close()
    assert no_reader_threads()


def test_flipped_byte_in_later_chunk_raises_dataset_error(tmp_path):
    # float32 rows of 4 KiB: HDF5 stores /train/x in 1 MiB chunks of 256 rows, so the
    # last HDF5 chunk holds rows 768:1024 and only the stream chunks there read it.
    path = tmp_path / "big.h5"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1024, 1024)).astype(np.float32)
    write_dataset(
        path,
        name="big",
        source="test",
        n_classes=10,
        input_shape=(1024,),
        x_train=x,
        y_train=np.arange(1024) % 10,
        x_test=x[:2],
        y_test=np.arange(2),
        x_scale=1.0,
        synthetic=True,
    )
    with ChunkedBatchStream(path, 0, 1024, 64, seed=0, chunk_examples=256) as s:
        s.next_batch()
        with h5py.File(path) as f:
            ds = f["/train/x"]
            assert ds.chunks[0] == 256  # the layout the comment above relies on
            info = ds.id.get_chunk_info(ds.id.get_num_chunks() - 1)
        with open(path, "r+b") as fh:
            fh.seek(info.byte_offset + 100)
            byte = fh.read(1)[0]
            fh.seek(info.byte_offset + 100)
            fh.write(bytes([byte ^ 0xFF]))
        with pytest.raises(DatasetError, match="checksum") as caught:
            for _ in range(3 * 1024 // 64):  # within the next two epochs' reads
                s.next_batch()
        assert str(path) in str(caught.value) and "/train/x" in str(caught.value)
    assert no_reader_threads()


def test_bad_arguments(rows_file, tmp_path):
    path, _ = rows_file
    for start, stop in [(0, 0), (-1, 10), (10, 201), (50, 40)]:
        with pytest.raises(ValueError):
            ChunkedBatchStream(path, start, stop, 4, seed=0)
    with pytest.raises(ValueError):
        ChunkedBatchStream(path, 0, 10, 0, seed=0)
    with pytest.raises(ValueError):
        ChunkedBatchStream(path, 0, 10, 4, seed=0, chunk_examples=0)
    with pytest.raises(DatasetError, match="not found"):
        ChunkedBatchStream(tmp_path / "missing.h5", 0, 10, 4, seed=0)


def test_close_joins_thread_and_is_idempotent(rows_file):
    path, _ = rows_file
    s = ChunkedBatchStream(path, 0, 200, 16, seed=0, chunk_examples=20)
    take(s, 2)
    assert any(t.name.startswith(THREAD_NAME) for t in threading.enumerate())
    s.close()
    assert no_reader_threads()
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.next_batch()
    with ChunkedBatchStream(path, 0, 200, 16, seed=0, chunk_examples=20) as t:
        t.restore(t.state())  # restarting replaces the thread, never adds one
        t.fast_forward(100)
        assert sum(th.name.startswith(THREAD_NAME) and th.is_alive() for th in threading.enumerate()) == 1
    assert no_reader_threads()


def test_at_most_two_chunks_resident(rows_file):
    path, _ = rows_file
    with ChunkedBatchStream(path, 0, 200, 5, seed=0, chunk_examples=20) as s:
        for _ in range(60):
            s.next_batch()
            reader = s._reader
            # permits taken = chunks alive (served + read or queued); never more than two
            assert reader.permits._value >= 0
            assert reader.out.qsize() + (s._chunk is not None) <= 2
