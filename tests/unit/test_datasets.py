"""distbelief_mpi.data: schema-1 HDF5 reader/writer, damaged files, replica batches."""

import os

import h5py
import numpy as np
import pytest

from distbelief_mpi.data.batches import BatchStream, replica_slice
from distbelief_mpi.data.hdf5 import read_info, read_split, validate, write_dataset
from distbelief_mpi.errors import DatasetError, UserInputError


def small_arrays(n_train=50, n_test=20, shape=(1, 4, 4), n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        x_train=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        y_train=rng.integers(0, n_classes, n_train),
        x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        y_test=rng.integers(0, n_classes, n_test),
    )


def write_small(path, **overrides):
    kwargs = dict(
        name="tiny",
        source="test",
        n_classes=3,
        input_shape=(1, 4, 4),
        x_scale=1 / 255,
        synthetic=True,
        **small_arrays(),
    )
    kwargs.update(overrides)
    write_dataset(path, **kwargs)
    return kwargs


@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "tiny.h5"
    return path, write_small(path)


# -- round trip ------------------------------------------------------------------------
def test_round_trip_uint8(small_file):
    path, data = small_file
    info = read_info(path)
    assert (info.name, info.n_classes, info.input_shape) == ("tiny", 3, (1, 4, 4))
    assert (info.n_train, info.n_test, info.synthetic, info.schema_version) == (50, 20, True, 1)
    assert info.x_scale == pytest.approx(1 / 255)
    x, y = read_split(path, "train")
    assert x.dtype == np.float32 and y.dtype == np.int32 and x.shape == (50, 1, 4, 4)
    np.testing.assert_allclose(x, data["x_train"] / 255, rtol=1e-6)
    np.testing.assert_array_equal(y, data["y_train"])
    assert validate(path) == info


def test_round_trip_float_vectors(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 7), dtype=np.float32)
    y = rng.integers(0, 300, 30)
    path = tmp_path / "vec.h5"
    write_dataset(
        path,
        name="vec",
        source="test",
        n_classes=300,
        input_shape=(7,),
        x_train=x,
        y_train=y,
        x_test=x[:5],
        y_test=y[:5],
        x_scale=1.0,
        synthetic=False,
        extra_attrs={"split_seed": 4},
    )
    got_x, got_y = read_split(path, "test")
    np.testing.assert_array_equal(got_x, x[:5])
    np.testing.assert_array_equal(got_y, y[:5])
    with h5py.File(path) as f:
        assert f.attrs["split_seed"] == 4 and f["/train/y"].dtype == np.uint16
        assert all(f[d].fletcher32 for d in ("/train/x", "/train/y", "/test/x", "/test/y"))
    assert validate(path).input_shape == (7,)


def test_read_split_slices(small_file):
    path, data = small_file
    x, y = read_split(path, "train", 10, 17)
    np.testing.assert_allclose(x, data["x_train"][10:17] / 255, rtol=1e-6)
    np.testing.assert_array_equal(y, data["y_train"][10:17])
    assert read_split(path, "test", 20)[0].shape == (0, 1, 4, 4)
    with pytest.raises(ValueError):
        read_split(path, "train", 0, 51)
    with pytest.raises(ValueError):
        read_split(path, "valid")


def test_write_rejects_bad_input_and_leaves_no_file(tmp_path):
    path = tmp_path / "bad.h5"
    bad_cases = [
        dict(y_train=np.full(50, 3)),  # label out of range
        dict(x_test=np.zeros((20, 1, 4, 5), np.uint8)),  # wrong row shape
        dict(y_test=np.zeros(19, int)),  # length mismatch
        dict(x_train=np.zeros((50, 1, 4, 4), np.float64)),  # dtype
        dict(x_scale=0.0),
        dict(extra_attrs={"n_classes": 5}),
    ]
    for override in bad_cases:
        with pytest.raises(DatasetError, match="bad.h5"):
            write_small(path, **override)
    assert os.listdir(tmp_path) == []


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "out.h5"
    write_small(path)
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("distbelief_mpi.data.writer.os.replace", explode)
    with pytest.raises(KeyboardInterrupt):
        write_small(path, name="other")
    assert os.listdir(tmp_path) == ["out.h5"] and path.read_bytes() == before


# -- damaged and wrong-schema files ----------------------------------------------------
def chunk_offset(path, name="/train/x"):
    with h5py.File(path, "r") as f:
        return f[name].id.get_chunk_info(0).byte_offset


def flip_byte(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0xFF]))


def expect_error(path, *fragments, check=validate):
    with pytest.raises(DatasetError) as caught:
        check(path)
    message = str(caught.value)
    assert isinstance(caught.value, UserInputError) and str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.h5", "file not found", check=read_info)


def test_truncated_file(small_file):
    path, _ = small_file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "not a readable HDF5 file", "truncated", check=read_info)


def test_zeroed_file(small_file):
    path, _ = small_file
    path.write_bytes(bytes(path.stat().st_size))
    expect_error(path, "not a readable HDF5 file", check=read_info)


def test_flipped_byte_in_train_x(small_file):
    path, _ = small_file
    flip_byte(path, chunk_offset(path) + 10)
    read_info(path)  # metadata is intact; only the data is damaged
    expect_error(path, "/train/x: data is corrupted (fletcher32 checksum mismatch)")
    expect_error(path, "/train/x", check=lambda p: read_split(p, "train"))
    read_split(path, "test")  # other datasets still read


def test_zeroed_chunk_in_test_y(small_file):
    path, _ = small_file
    with h5py.File(path, "r") as f:
        info = f["/test/y"].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(bytes(info.size))
    expect_error(path, "/test/y: data is corrupted")


def edit(path, action):
    with h5py.File(path, "r+") as f:
        action(f)


def replace(f, name, data):
    del f[name]
    f.create_dataset(name, data=data)


@pytest.mark.parametrize(
    "action, fragment",
    [
        (lambda f: f.attrs.__delitem__("x_scale"), "missing root attribute 'x_scale'"),
        (lambda f: f.attrs.__delitem__("schema_version"), "missing root attribute 'schema_version'"),
        (lambda f: f.attrs.__setitem__("schema_version", 2), "unsupported schema_version 2"),
        (lambda f: f.attrs.__setitem__("input_shape", [1, 4, 5]), "/train/x has shape (50, 1, 4, 4)"),
        (lambda f: f.attrs.__setitem__("n_classes", "three"), "'n_classes'"),
        (lambda f: f.__delitem__("/test/y"), "missing dataset /test/y"),
        (lambda f: replace(f, "/test/y", np.zeros(19, int)), "/test/x has 20 rows but /test/y has 19"),
        (lambda f: replace(f, "/test/x", np.zeros((20, 1, 4, 4))), "float64"),
    ],
)
def test_wrong_schema(small_file, action, fragment):
    path, _ = small_file
    edit(path, action)
    expect_error(path, fragment, check=read_info)


def test_validate_checks_labels_and_filters(small_file):
    path, _ = small_file
    labels = read_split(path, "train")[1]
    edit(path, lambda f: f.attrs.__setitem__("n_classes", 2))
    read_info(path)  # cheap check does not read labels
    first_bad = np.flatnonzero(labels >= 2)[0]
    expect_error(path, f"/train/y[{first_bad}]", "[0, 2)")
    with pytest.raises(DatasetError, match=rf"/train/y\[{first_bad}\] = \d+ is not a label in \[0, 2\)"):
        read_split(path, "train")  # training would crash mid-run on such a label
    edit(path, lambda f: f.attrs.__setitem__("n_classes", 3))
    edit(path, lambda f: replace(f, "/test/y", f["/test/y"][:]))  # no fletcher32
    expect_error(path, "/test/y is not chunked with the fletcher32")


def test_validate_rejects_nan(tmp_path):
    x = np.ones((4, 2), np.float32)
    path = tmp_path / "nan.h5"
    write_dataset(
        path,
        name="n",
        source="t",
        n_classes=2,
        input_shape=(2,),
        x_train=x,
        y_train=np.zeros(4, int),
        x_test=x,
        y_test=np.zeros(4, int),
        x_scale=1.0,
        synthetic=True,
    )
    edit(path, lambda f: f["/test/x"].__setitem__((2, 1), np.nan))
    expect_error(path, "/test/x[2] contains NaN")


# -- replicas and batches --------------------------------------------------------------
@pytest.mark.parametrize("n, replicas", [(0, 3), (10, 1), (10, 3), (7, 7), (5, 8), (1001, 16)])
def test_replica_slices_disjoint_and_covering(n, replicas):
    slices = [replica_slice(n, r, replicas) for r in range(replicas)]
    assert slices[0][0] == 0 and slices[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
    sizes = [stop - start for start, stop in slices]
    assert max(sizes) - min(sizes) <= 1


def test_replica_slice_rejects_bad_ids():
    with pytest.raises(ValueError):
        replica_slice(10, 3, 3)


def stream_of(n=23, batch=5, seed=7, replica=0):
    x = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    return BatchStream(x, np.arange(n, dtype=np.int32), batch, seed, replica)


def test_batch_stream_sees_every_example_once_per_epoch():
    stream = stream_of(n=23, batch=5)
    seen = np.concatenate([stream.next_batch()[1].copy() for _ in range(23)])  # 5 epochs
    for epoch in range(5):
        assert sorted(seen[epoch * 23 : (epoch + 1) * 23]) == list(range(23))
    assert stream.examples_seen == 115 and stream.epoch == pytest.approx(5.0)
    x, y = stream.next_batch()
    np.testing.assert_array_equal(x[:, 0], y)  # x rows follow their labels
    assert stream.epoch == pytest.approx(120 / 23)


def test_batch_stream_deterministic_and_reshuffles():
    a, b, c = stream_of(seed=1), stream_of(seed=1), stream_of(seed=2)
    run_a = [a.next_batch()[1].copy() for _ in range(20)]
    run_b = [b.next_batch()[1].copy() for _ in range(20)]
    run_c = [c.next_batch()[1].copy() for _ in range(20)]
    np.testing.assert_array_equal(np.concatenate(run_a), np.concatenate(run_b))
    assert not np.array_equal(np.concatenate(run_a), np.concatenate(run_c))
    flat = np.concatenate(run_a)
    assert not np.array_equal(flat[:23], flat[23:46])  # a new order each epoch
    other_replica = stream_of(seed=1, replica=1)
    assert not np.array_equal(other_replica.next_batch()[1], run_a[0])


def test_batch_larger_than_shard_wraps():
    stream = stream_of(n=3, batch=7)
    _, y = stream.next_batch()
    assert len(y) == 7 and sorted(y[:3]) == [0, 1, 2] and sorted(y[3:6]) == [0, 1, 2]


def test_an_empty_split_is_rejected_at_open(small_file):
    path, _ = small_file
    edit(path, lambda f: replace(f, "/test/x", f["/test/x"][:0]))
    edit(path, lambda f: replace(f, "/test/y", f["/test/y"][:0]))
    with pytest.raises(DatasetError, match="tiny.h5: /test/x is empty"):
        read_info(path)


@pytest.mark.parametrize("n_classes", [1, (1 << 24) + 1])
def test_class_count_must_suit_a_classifier(tmp_path, small_file, n_classes):
    path, _ = small_file
    edit(path, lambda f: f.attrs.__setitem__("n_classes", n_classes))
    with pytest.raises(DatasetError, match=f"tiny.h5: n_classes {n_classes} must be in"):
        read_info(path)
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(DatasetError, match="must be in"):
        write_dataset(
            tmp_path / "w.h5",
            name="w",
            source="t",
            n_classes=n_classes,
            input_shape=(3,),
            x_train=x,
            y_train=np.zeros(2, int),
            x_test=x,
            y_test=np.zeros(2, int),
            x_scale=1.0,
            synthetic=True,
        )
    assert not (tmp_path / "w.h5").exists()


def test_batch_stream_state_restores_the_exact_sequence():
    x, y = np.arange(70, dtype=np.float32).reshape(35, 2), np.arange(35)
    first = BatchStream(x, y, 8, seed=4, replica_id=1)
    for _ in range(9):  # past two epoch boundaries
        first.next_batch()
    saved = first.state()
    expected = [first.next_batch()[1].copy() for _ in range(10)]
    second = BatchStream(x, y, 8, seed=4, replica_id=1)
    second.restore(saved)
    assert [second.next_batch()[1].tolist() for _ in range(10)] == [e.tolist() for e in expected]
    assert second.examples_seen == first.examples_seen


def test_fast_forward_keeps_counting_epochs():
    x, y = np.zeros((10, 1), np.float32), np.arange(10)
    stream = BatchStream(x, y, 5, seed=0)
    stream.fast_forward(25)
    assert stream.epoch == 2.5
    seen = np.concatenate([stream.next_batch()[1].copy() for _ in range(2)])
    assert sorted(seen.tolist()) == list(range(10))
