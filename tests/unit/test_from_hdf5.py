"""`from-hdf5`: datasets of a user's HDF5 file, converted block by block."""

import os

import h5py
import numpy as np
import pytest

import data_tools.convert as convert
from data_tools.cli import main
from distbelief_mpi.data.hdf5 import read_info, read_split, validate

N, N_TEST = 40, 10


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *fragments):
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in line, line


def make_source(path, x=None, y=None, **extra):
    """/data/images (N, 6, 5, 1) uint8 whose pixels hold the row number, /data/labels (N,),
    /test/images and /test/labels (N_TEST rows); `extra` adds or replaces datasets."""
    rows = np.arange(N, dtype=np.uint8)[:, None, None, None]
    datasets = {
        "data/images": np.broadcast_to(rows, (N, 6, 5, 1)) if x is None else x,
        "data/labels": np.arange(N) % 4 if y is None else y,
        "test/images": np.full((N_TEST, 6, 5, 1), 200, np.uint8),
        "test/labels": np.arange(N_TEST) % 4,
        **extra,
    }
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            if value is not None:
                f[key] = value
    return path


@pytest.fixture
def src(tmp_path):
    return make_source(tmp_path / "src.h5")


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 3 source rows (90 bytes), recording the size of every read."""
    monkeypatch.setattr(convert, "BLOCK_BYTES", 3 * 6 * 5)
    sizes: list[int] = []
    read = convert.read_rows

    def recording(source, array, name, lo, hi):
        sizes.append(hi - lo)
        return read(source, array, name, lo, hi)

    monkeypatch.setattr(convert, "read_rows", recording)
    return sizes


def test_explicit_test_datasets_stream_in_blocks(src, tmp_path, capsys, small_blocks):
    out = tmp_path / "out.h5"
    args = ("--x", "/data/images", "--y", "data/labels", "--x-test", "/test/images", "--y-test", "/test/labels")
    code, _, err = run_cli(capsys, "from-hdf5", src, out, *args, "--x-scale", "1/255")
    assert code == 0, err
    assert max(small_blocks) == 3 and len(small_blocks) > 2 * (N // 3)  # two passes, never the whole array
    info = validate(out)
    assert (info.name, info.input_shape, info.n_train, info.n_test, info.n_classes) == ("src", (1, 6, 5), N, N_TEST, 4)
    assert "/data/images" in info.source and "/test/labels" in info.source
    x, y = read_split(out, "train")
    np.testing.assert_allclose(x[:, 0, 0, 0] * 255, np.arange(N), atol=1e-4)
    np.testing.assert_array_equal(y, np.arange(N) % 4)
    assert "read as channels-last NHWC" in err


def test_test_fraction_is_seeded_and_keeps_order(src, tmp_path, capsys, small_blocks):
    def split_rows(seed, name):
        out = tmp_path / name
        code, _, err = run_cli(
            capsys,
            "from-hdf5",
            src,
            out,
            "--x",
            "/data/images",
            "--y",
            "/data/labels",
            "--test-fraction",
            "0.25",
            "--seed",
            seed,
        )
        assert code == 0, err
        return [read_split(out, split)[0][:, 0, 0, 0].astype(int) for split in ("train", "test")]

    train, test = split_rows(7, "a.h5")
    assert len(test) == 10 and len(train) == 30
    assert sorted([*train, *test]) == list(range(N)) and list(train) == sorted(train) and list(test) == sorted(test)
    np.testing.assert_array_equal(split_rows(7, "b.h5")[1], test)
    assert list(split_rows(8, "c.h5")[1]) != list(test)


def test_float_x_is_stored_as_float32(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(N, 12)).astype(np.float64)
    src = make_source(tmp_path / "f.h5", x=x)
    out = tmp_path / "o.h5"
    code, _, err = run_cli(
        capsys, "from-hdf5", src, out, "--x", "data/images", "--y", "data/labels", "--test-fraction", "1/4"
    )
    assert code == 0, err
    info = read_info(out)
    assert info.input_shape == (12,) and "NHWC" not in err
    with h5py.File(out) as f:
        assert f["train/x"].dtype == np.float32


TRAIN = ("--x", "/data/images", "--y", "/data/labels")
WITH_TEST = (*TRAIN, "--x-test", "/test/images", "--y-test", "/test/labels")


@pytest.mark.parametrize(
    "datasets, args, fragments",
    [
        (
            {},
            ("--x", "/images", "--y", "/data/labels", "--test-fraction", "0.1"),
            ["/images does not exist", "the file holds: /data/images (40, 6, 5, 1) uint8"],
        ),
        ({}, ("--x", "/data", "--y", "/data/labels", "--test-fraction", "0.1"), ["/data is a group, not a dataset"]),
        (dict(y=np.zeros((N, 2), int)), WITH_TEST, ["/data/labels has shape (40, 2), expected (n,)"]),
        (dict(y=np.zeros(N - 1, int)), WITH_TEST, ["/data/images has 40 rows but /data/labels has 39"]),
        (
            dict(y=np.zeros(N - 1, int)),
            (*TRAIN, "--test-fraction", "0.1"),
            ["--test-fraction needs /data/images (n, ...) and /data/labels (n,)"],
        ),
        (dict(y=np.zeros(N)), WITH_TEST, ["/data/labels has dtype float64; labels must be integers"]),
        (dict(y=np.r_[np.zeros(N - 1, int), -3]), WITH_TEST, ["/data/labels contains negative label -3 (row 39)"]),
        (
            dict(x=np.zeros((N, 6, 5, 2), np.uint8)),
            WITH_TEST,
            ["/test/images rows have shape (6, 5, 1) but /data/images rows have (6, 5, 2)"],
        ),
        (dict(x=np.zeros(N)), WITH_TEST, ["/data/images has shape (40,)"]),
        (dict(x=np.float32(3)), WITH_TEST, ["/data/images has shape ()"]),
        (dict(y=np.int64(3)), WITH_TEST, ["/data/labels has shape (), expected (n,)"]),
        (dict(x=np.float32(3)), (*TRAIN, "--test-fraction", "0.1"), ["--test-fraction needs /data/images (n, ...)"]),
        (dict(x=np.array([b"a"] * N)), WITH_TEST, ["/data/images has shape (40,)"]),
        (
            dict(x=np.r_[np.zeros((N - 1, 7)), np.full((1, 7), np.nan)]),
            (*TRAIN, "--test-fraction", "0.1"),
            ["/data/images contains NaN or infinite values (as float32), first in row 39"],
        ),
        ({}, (*WITH_TEST, "--n-classes", "3"), ["label 3 does not fit --n-classes 3"]),
        ({}, (*WITH_TEST, "--layout", "nchw", "--x-scale", "-1"), ["--x-scale: must be a positive number"]),
    ],
)
def test_bad_input_exits_2_and_leaves_nothing(tmp_path, capsys, small_blocks, datasets, args, fragments):
    src = make_source(tmp_path / "bad.h5", **datasets)
    code, _, err = run_cli(capsys, "from-hdf5", src, tmp_path / "out.h5", *args)
    if args[-1] == "-1":  # an argparse usage error names the option, not the file
        assert code == 2 and fragments[0] in err
    else:
        assert_user_error(code, err, "bad.h5: ", *fragments)
    assert os.listdir(tmp_path) == ["bad.h5"]


def test_text_x_is_refused(tmp_path, capsys):
    src = make_source(tmp_path / "t.h5", x=np.array([[b"ab"] * 3] * N))
    code, _, err = run_cli(capsys, "from-hdf5", src, tmp_path / "o.h5", *WITH_TEST)
    assert_user_error(code, err, "t.h5: /data/images has dtype |S2; expected numbers")


def test_missing_source_and_option_pairs(tmp_path, capsys):
    code, _, err = run_cli(capsys, "from-hdf5", tmp_path / "none.h5", tmp_path / "o.h5", *WITH_TEST)
    assert_user_error(code, err, "none.h5: file not found")
    src = make_source(tmp_path / "s.h5")
    code, _, err = run_cli(capsys, "from-hdf5", src, tmp_path / "o.h5", *TRAIN, "--x-test", "/test/images")
    assert code == 2 and "--x-test and --y-test go together" in err
    code, _, err = run_cli(capsys, "from-hdf5", src, tmp_path / "o.h5", *TRAIN)
    assert code == 2 and "one of the arguments --x-test --test-fraction is required" in err
    code, _, err = run_cli(capsys, "from-hdf5", src, src, *WITH_TEST)
    assert_user_error(code, err, "s.h5: the output would replace the source file")
    assert sorted(os.listdir(tmp_path)) == ["s.h5"]


def test_a_read_failure_while_writing_leaves_no_output(src, tmp_path, capsys, monkeypatch):
    """The second pass fails half-way (as a damaged chunk would): no output, not even a temp file."""
    calls = {"n": 0}
    read = convert.read_rows
    monkeypatch.setattr(convert, "BLOCK_BYTES", 3 * 6 * 5)

    def failing(source, array, name, lo, hi):
        calls["n"] += 1
        if calls["n"] > 40:  # pass 1 reads 2 x 18 blocks; this is in pass 2
            raise convert.DatasetError(source, f"{name}: read failed at rows {lo}:{hi}: injected")
        return read(source, array, name, lo, hi)

    monkeypatch.setattr(convert, "read_rows", failing)
    code, _, err = run_cli(capsys, "from-hdf5", src, tmp_path / "o.h5", *WITH_TEST)
    assert_user_error(code, err, "src.h5: /data/", "injected")
    assert os.listdir(tmp_path) == ["src.h5"]


def test_a_corrupted_source_chunk_is_named(tmp_path, capsys):
    src = tmp_path / "c.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("x", data=np.arange(4000, dtype=np.uint8).reshape(1000, 4), chunks=(100, 4), fletcher32=True)
        f["y"] = np.arange(1000) % 2
        offset = f["x"].id.get_chunk_info(3).byte_offset
    with open(src, "r+b") as handle:
        handle.seek(offset + 5)
        handle.write(b"\xff\x00\xff")
    code, _, err = run_cli(
        capsys, "from-hdf5", src, tmp_path / "o.h5", "--x", "x", "--y", "y", "--test-fraction", "0.5"
    )
    assert_user_error(code, err, "c.h5: /x: read failed at rows")
    assert os.listdir(tmp_path) == ["c.h5"]
