"""data_tools commands, in-process through main(argv) and once via `python -m data_tools`."""

import gzip
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_tools.cli import main
from data_tools.fashion_mnist import DEFAULT_SOURCE_DIR, FASHION_MNIST_SHA256, FILES, build_fashion_mnist
from distbelief_mpi.data.hdf5 import read_info, read_split, validate
from distbelief_mpi.errors import DatasetError

REPO = Path(__file__).resolve().parents[2]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *fragments):
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in line, line


# -- digits ----------------------------------------------------------------------------
def test_digits(tmp_path, capsys):
    out = tmp_path / "digits.h5"
    code, _, err = run_cli(capsys, "digits", out, "--seed", "3")
    assert code == 0 and "wrote" in err
    info = validate(out)
    assert (info.n_classes, info.input_shape, info.n_train + info.n_test) == (10, (1, 8, 8), 1797)
    assert info.n_test == 359 and info.x_scale == pytest.approx(1 / 16)
    x, y = read_split(out, "test")
    assert x.max() <= 1.0 and np.bincount(y).min() >= 35  # stratified: ~36 of each digit
    again = tmp_path / "again.h5"
    assert run_cli(capsys, "digits", again, "--seed", "3")[0] == 0
    np.testing.assert_array_equal(read_split(again, "train")[1], read_split(out, "train")[1])


def test_digits_rejects_bad_fraction(tmp_path, capsys):
    code, _, err = run_cli(capsys, "digits", tmp_path / "d.h5", "--test-fraction", "1.5")
    assert code == 2 and "between 0 and 1" in err and not os.listdir(tmp_path)


# -- fashion-mnist from a tiny generated IDX directory ---------------------------------
def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_idx_dir(directory: Path, n_train=12, n_test=5) -> dict:
    """Writes the four .gz files; returns {file name: sha256 of the decompressed bytes}."""
    directory.mkdir()
    rng = np.random.default_rng(0)
    digests = {}
    for split, n in (("train", n_train), ("test", n_test)):
        image_name, label_name = FILES[split]
        for name, raw in (
            (image_name, idx_bytes(rng.integers(0, 256, (n, 28, 28)), 0x803)),
            (label_name, idx_bytes(rng.integers(0, 10, n), 0x801)),
        ):
            (directory / name).write_bytes(gzip.compress(raw))
            digests[name] = hashlib.sha256(raw).hexdigest()
    return digests


def test_fashion_mnist_parses_tiny_idx(tmp_path):
    src = tmp_path / "idx"
    digests = make_idx_dir(src)
    out = tmp_path / "f.h5"
    build_fashion_mnist(out, src, expected_sha256=digests, expected_counts=None)
    info = validate(out)
    assert (info.n_train, info.n_test, info.input_shape) == (12, 5, (1, 28, 28))
    with gzip.open(src / FILES["train"][0]) as fh:
        pixels = np.frombuffer(fh.read()[16:], np.uint8).reshape(12, 1, 28, 28)
    np.testing.assert_allclose(read_split(out, "train")[0], pixels / 255, rtol=1e-6)
    with h5py.File(out) as f:
        assert "MIT" in f.attrs["source"]
        assert f.attrs["sha256:" + FILES["test"][1]] == digests[FILES["test"][1]]


def test_fashion_mnist_sha_mismatch(tmp_path, capsys):
    src = tmp_path / "idx"
    make_idx_dir(src)
    code, _, err = run_cli(capsys, "fashion-mnist", tmp_path / "f.h5", "--source", src)
    assert_user_error(code, err, FILES["train"][0], "SHA-256", "upstream")
    assert sorted(os.listdir(tmp_path)) == ["idx"]


def test_fashion_mnist_bad_idx(tmp_path):
    src = tmp_path / "idx"
    digests = make_idx_dir(src)
    label_file = src / FILES["train"][1]
    label_file.write_bytes(gzip.compress(idx_bytes(np.zeros(3), 0x803)))
    with pytest.raises(DatasetError, match="bad IDX magic number 0x00000803"):
        build_fashion_mnist(tmp_path / "f.h5", src, expected_sha256=None, expected_counts=None)
    label_file.write_bytes(gzip.compress(idx_bytes(np.zeros(12), 0x801)[:-2]))
    with pytest.raises(DatasetError, match="need 20 bytes, file has 18"):
        build_fashion_mnist(tmp_path / "f.h5", src, expected_sha256=None, expected_counts=None)
    label_file.write_bytes(b"not gzip")
    with pytest.raises(DatasetError, match="not a readable gzip file"):
        build_fashion_mnist(tmp_path / "f.h5", src, expected_sha256=digests)


def test_fashion_mnist_missing_source(tmp_path, capsys):
    code, _, err = run_cli(capsys, "fashion-mnist", tmp_path / "f.h5", "--source", tmp_path / "absent")
    assert_user_error(code, err, "absent", "apt-get install dataset-fashion-mnist", "--source")


@pytest.mark.skipif(
    not Path(DEFAULT_SOURCE_DIR).is_dir(), reason=f"{DEFAULT_SOURCE_DIR} absent (apt-get install dataset-fashion-mnist)"
)
def test_real_fashion_mnist(tmp_path, capsys):
    out = tmp_path / "fashion.h5"
    code, _, err = run_cli(capsys, "fashion-mnist", out)
    assert code == 0, err
    info = validate(out)
    assert (info.n_train, info.n_test, info.n_classes) == (60_000, 10_000, 10)
    with h5py.File(out) as f:
        for name, digest in FASHION_MNIST_SHA256.items():
            assert f.attrs["sha256:" + name] == digest
        assert np.bincount(f["/test/y"][:]).tolist() == [1000] * 10


# -- speech-frames ---------------------------------------------------------------------
def test_speech_frames(tmp_path, capsys):
    out, again = tmp_path / "s.h5", tmp_path / "again.h5"
    assert run_cli(capsys, "speech-frames", out, "--n", 300, "--n-test", 40)[0] == 0
    info = validate(out)
    assert (info.input_shape, info.n_classes, info.n_train, info.n_test) == ((440,), 8192, 300, 40)
    assert info.synthetic and "synthetic" in info.source
    assert run_cli(capsys, "speech-frames", again, "--n", 300, "--n-test", 40)[0] == 0
    x1, y1 = read_split(out, "train")
    x2, y2 = read_split(again, "train")
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert len(np.unique(y1)) > 250  # labels spread over the classes, not one or two


def test_speech_frames_labels_are_learnable():
    from data_tools.speech_frames import make_block, make_prototypes

    prototypes = make_prototypes(0)
    x, y = make_block(0, "test", 0, 300, prototypes)
    distances = (x**2).sum(1)[:, None] - 2 * x @ prototypes.T + (prototypes**2).sum(1)
    assert (distances.argmin(1) == y).mean() > 0.8


# -- from-npz --------------------------------------------------------------------------
def save_npz(path, n_train=10, n_test=4, row=(3, 5), **overrides):
    rng = np.random.default_rng(0)
    arrays = dict(
        x_train=rng.integers(0, 256, (n_train, *row)),
        y_train=rng.integers(0, 4, n_train),
        x_test=rng.integers(0, 256, (n_test, *row)),
        y_test=rng.integers(0, 4, n_test),
    )
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


@pytest.mark.parametrize("row, shape", [((6,), (6,)), ((3, 5), (1, 3, 5)), ((2, 3, 5), (2, 3, 5))])
def test_from_npz_shapes(tmp_path, capsys, row, shape):
    npz, out = tmp_path / "mine.npz", tmp_path / "mine.h5"
    arrays = save_npz(npz, row=row)
    code, _, err = run_cli(capsys, "from-npz", npz, out, "--x-scale", "1/255")
    assert code == 0, err
    info = validate(out)
    assert (info.name, info.input_shape, info.n_train, info.n_test) == ("mine", shape, 10, 4)
    assert info.n_classes == max(arrays["y_train"].max(), arrays["y_test"].max()) + 1
    x, _ = read_split(out, "train")
    np.testing.assert_allclose(x.reshape(arrays["x_train"].shape), arrays["x_train"] / 255, rtol=1e-6)


def test_from_npz_float_and_options(tmp_path, capsys):
    npz, out = tmp_path / "f.npz", tmp_path / "f.h5"
    save_npz(npz, x_train=np.full((10, 3, 5), 0.5), x_test=np.full((4, 3, 5), -2.0))
    assert run_cli(capsys, "from-npz", npz, out, "--name", "floats", "--n-classes", 9)[0] == 0
    info = read_info(out)
    assert (info.name, info.n_classes, info.x_scale) == ("floats", 9, 1.0)
    assert read_split(out, "test")[0].min() == -2.0


@pytest.mark.parametrize(
    "overrides, args, fragment",
    [
        (dict(y_test=None), (), "missing array(s) y_test"),
        (dict(y_train=np.zeros(9, int)), (), "x_train has 10 rows but y_train has 9"),
        (dict(y_train=np.zeros(10)), (), "y_train has dtype float64; labels must be integers"),
        (dict(y_test=np.array([0, -1, 2, 3])), (), "y_test contains negative label -1"),
        (dict(x_test=np.zeros((4, 3, 6), int)), (), "x_test rows have shape (3, 6)"),
        (dict(x_train=np.zeros(10)), (), "x_train has shape (10,)"),
        (dict(x_train=np.full((10, 3, 5), np.nan)), (), "x_train contains NaN"),
        (dict(y_train=np.full(10, 3)), ("--n-classes", "2"), "label 3 does not fit --n-classes 2"),
    ],
)
def test_from_npz_errors(tmp_path, capsys, overrides, args, fragment):
    npz = tmp_path / "bad.npz"
    save_npz(npz, **overrides)
    code, _, err = run_cli(capsys, "from-npz", npz, tmp_path / "out.h5", *args)
    assert_user_error(code, err, "bad.npz", fragment)
    assert os.listdir(tmp_path) == ["bad.npz"]


def test_from_npz_not_an_npz(tmp_path, capsys):
    npz = tmp_path / "junk.npz"
    npz.write_bytes(b"hello")
    code, _, err = run_cli(capsys, "from-npz", npz, tmp_path / "out.h5")
    assert_user_error(code, err, "junk.npz", "not a readable .npz")


# -- inspect / validate ----------------------------------------------------------------
@pytest.fixture
def digits_file(tmp_path, capsys):
    out = tmp_path / "digits.h5"
    assert run_cli(capsys, "digits", out)[0] == 0
    return out


def test_inspect(digits_file, capsys):
    code, out, _ = run_cli(capsys, "inspect", digits_file)
    assert code == 0
    for fragment in (
        "schema_version = 1",
        "x_scale = 0.0625",
        "input_shape = [1, 8, 8]",
        "/train/x: shape (1438, 1, 8, 8) uint8",
        "fletcher32",
        "train: 0:142",
    ):
        assert fragment in out, out


def test_validate_ok_and_damaged(digits_file, capsys):
    code, out, _ = run_cli(capsys, "validate", digits_file)
    assert code == 0 and out.strip().startswith(f"{digits_file}: ok (digits")
    with h5py.File(digits_file) as f:
        offset = f["/train/x"].id.get_chunk_info(0).byte_offset
    with open(digits_file, "r+b") as fh:
        fh.seek(offset + 5)
        fh.write(b"\x99\x98")
    code, out, err = run_cli(capsys, "validate", digits_file)
    assert_user_error(code, err, str(digits_file), "/train/x: data is corrupted")
    assert out == ""


def set_attr(path, key, value):
    with h5py.File(path, "r+") as f:
        f.attrs[key] = value


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:3000]), "truncated"),
        (lambda p: p.write_bytes(bytes(p.stat().st_size)), "not a readable HDF5 file"),
        (lambda p: p.unlink(), "file not found"),
        (lambda p: set_attr(p, "input_shape", [64]), "/train/x has shape"),
    ],
)
def test_damaged_files_exit_2(digits_file, capsys, damage, fragment):
    damage(digits_file)
    for command in ("validate", "inspect"):
        code, _, err = run_cli(capsys, command, digits_file)
        assert_user_error(code, err, str(digits_file), fragment)


# -- as a real process -----------------------------------------------------------------
def run_module(*argv):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "data_tools", *map(str, argv)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_subprocess_help_and_errors(tmp_path):
    helped = run_module("--help")
    assert helped.returncode == 0
    for command in ("digits", "fashion-mnist", "speech-frames", "from-npz", "from-hdf5", "inspect", "validate"):
        assert command in helped.stdout
    missing = run_module("validate", tmp_path / "missing.h5")
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr == f"error: {tmp_path / 'missing.h5'}: file not found\n"
    usage = run_module("speech-frames", tmp_path / "s.h5")  # --n is required
    assert usage.returncode == 2 and "--n" in usage.stderr and not os.listdir(tmp_path)


def test_subprocess_build_and_validate(tmp_path):
    out = tmp_path / "s.h5"
    built = run_module("speech-frames", out, "--n", 50)
    assert built.returncode == 0 and "wrote" in built.stderr, built.stderr
    checked = run_module("validate", out)
    assert checked.returncode == 0 and ": ok (speech-frames" in checked.stdout
    with h5py.File(out) as f:
        flip_at = f["/test/x"].id.get_chunk_info(0).byte_offset
    with open(out, "r+b") as fh:
        fh.seek(flip_at + 100)
        fh.write(b"\x7f\x7f\x7f\x7f")
    damaged = run_module("validate", out)
    assert damaged.returncode == 2 and "Traceback" not in damaged.stderr
    assert damaged.stderr.startswith(f"error: {out}: /test/x: data is corrupted")


def test_sigterm_mid_write_leaves_no_file(tmp_path):
    import signal
    import time

    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_tools", "speech-frames", str(tmp_path / "big.h5"), "--n", "1e6"],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".big.h5.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and os.listdir(tmp_path) == []


def test_missing_output_directories_are_created(tmp_path):
    out = tmp_path / "new" / "deeper" / "digits.h5"
    assert main(["digits", str(out)]) == 0
    assert read_info(out).n_train > 0


def test_digits_without_scikit_learn_names_the_extra(tmp_path, monkeypatch, capsys):
    import builtins

    from data_tools.cli import main as data_tools_main

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    assert data_tools_main(["digits", str(tmp_path / "d.h5")]) == 2
    assert "pip install 'distbelief-mpi[digits]'" in capsys.readouterr().err
    assert not (tmp_path / "d.h5").exists()
