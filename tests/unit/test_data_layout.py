"""Image layouts of a user's x: the NHWC guess, --layout, and the stored NCHW rows."""

import os
from pathlib import Path

import numpy as np
import pytest

from data_tools.cli import main
from data_tools.layout import guess_layout, resolve_layout
from distbelief_mpi.data.hdf5 import read_info, read_split
from distbelief_mpi.errors import DatasetError


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "row, layout",
    [
        ((28, 28, 1), "nhwc"),  # Keras MNIST
        ((32, 32, 3), "nhwc"),  # CIFAR as most libraries write it
        ((3, 28, 1), "nhwc"),  # 3x28 grey strips rather than 3 channels of 28x1
        ((1, 28, 28), "nchw"),
        ((3, 32, 32), "nchw"),
        ((2, 3, 5), "nchw"),
        ((3, 8, 3), "nchw"),  # the last axis is not smaller than both before it
        ((32, 32, 4), "nchw"),  # only 1 or 3 channels are guessed as last
    ],
)
def test_guess_layout(row, layout):
    assert guess_layout(row) == layout


def test_resolve_logs_what_it_assumed_and_how_to_override():
    logged: list[str] = []
    rows = resolve_layout("f.npz", "x_train", (28, 28, 1), None, logged.append)
    assert rows.input_shape == (1, 28, 28) and rows.channels_last
    assert len(logged) == 1 and "channels-last NHWC" in logged[0] and "--layout nchw" in logged[0]
    logged.clear()
    rows = resolve_layout("f.npz", "x_train", (32, 32, 4), None, logged.append)
    assert rows.input_shape == (32, 32, 4) and "--layout nhwc" in logged[0]


def test_plain_nchw_and_explicit_layouts_log_nothing():
    logged: list[str] = []
    assert resolve_layout("f", "x", (3, 32, 32), None, logged.append).input_shape == (3, 32, 32)
    assert resolve_layout("f", "x", (28, 28, 1), "nchw", logged.append).input_shape == (28, 28, 1)
    assert resolve_layout("f", "x", (3, 32, 32), "nhwc", logged.append).input_shape == (32, 3, 32)
    assert logged == []


def test_layout_on_vectors_is_refused():
    with pytest.raises(
        DatasetError, match=r"f.npz: --layout nhwc applies to 4-D images.*x_train rows have shape \(6,\)"
    ):
        resolve_layout("f.npz", "x_train", (6,), "nhwc")


def test_to_stored_moves_channels_first():
    block = np.arange(2 * 4 * 5 * 3).reshape(2, 4, 5, 3)  # (k, H, W, C)
    stored = resolve_layout("f", "x", (4, 5, 3), "nhwc").to_stored(block)
    assert stored.shape == (2, 3, 4, 5) and stored.flags.c_contiguous
    assert stored[1, 2, 3, 4] == block[1, 3, 4, 2]


def save_images(path, row, n_train=6, n_test=3):
    rng = np.random.default_rng(1)
    arrays = dict(
        x_train=rng.integers(0, 256, (n_train, *row)),
        y_train=rng.integers(0, 3, n_train),
        x_test=rng.integers(0, 256, (n_test, *row)),
        y_test=rng.integers(0, 3, n_test),
    )
    np.savez(path, **arrays)
    return arrays


def test_from_npz_nhwc_is_guessed_warned_and_transposed(tmp_path, capsys):
    npz, out = tmp_path / "keras.npz", tmp_path / "keras.h5"
    arrays = save_images(npz, (28, 28, 1))
    code, _, err = run_cli(capsys, "from-npz", npz, out, "--x-scale", "1/255")
    assert code == 0, err
    assert "warning: x_train rows (28, 28, 1) read as channels-last NHWC" in err and "--layout nchw" in err
    assert read_info(out).input_shape == (1, 28, 28)
    x, _ = read_split(out, "train")
    np.testing.assert_allclose(x, arrays["x_train"].transpose(0, 3, 1, 2) / 255, rtol=1e-6)


def test_from_npz_layout_is_obeyed(tmp_path, capsys):
    npz = tmp_path / "rgb.npz"
    arrays = save_images(npz, (4, 5, 3))
    assert run_cli(capsys, "from-npz", npz, tmp_path / "a.h5", "--layout", "nhwc")[0] == 0
    x, _ = read_split(tmp_path / "a.h5", "test")
    np.testing.assert_array_equal(x, arrays["x_test"].transpose(0, 3, 1, 2))
    code, _, err = run_cli(capsys, "from-npz", npz, tmp_path / "b.h5", "--layout", "nchw")
    assert code == 0 and "warning" not in err
    assert read_info(tmp_path / "b.h5").input_shape == (4, 5, 3)


def test_from_npz_layout_on_grey_images_exits_2(tmp_path, capsys):
    npz = tmp_path / "grey.npz"
    save_images(npz, (8, 8))
    code, _, err = run_cli(capsys, "from-npz", npz, tmp_path / "g.h5", "--layout", "nhwc")
    assert code == 2 and "error: " in err and "grey.npz: --layout nhwc applies to 4-D images" in err
    assert os.listdir(tmp_path) == ["grey.npz"]


def test_from_npz_bad_layout_value_is_a_usage_error(tmp_path, capsys):
    npz = tmp_path / "x.npz"
    save_images(npz, (8, 8, 1))
    code, _, err = run_cli(capsys, "from-npz", npz, tmp_path / "x.h5", "--layout", "hwc")
    assert code == 2 and "invalid choice: 'hwc'" in err


def test_validate_and_inspect_warn_of_a_channels_last_looking_shape(tmp_path, capsys):
    npz, out = tmp_path / "old.npz", tmp_path / "old.h5"
    save_images(npz, (28, 28, 1))
    assert run_cli(capsys, "from-npz", npz, out, "--layout", "nchw")[0] == 0  # as from-npz stored it before
    for command in ("validate", "inspect"):
        code, stdout, _ = run_cli(capsys, command, out)
        assert code == 0 and "warning: input_shape (28, 28, 1) is read as 28 channels of 28x1" in stdout
        assert "--layout nhwc" in stdout
    assert run_cli(capsys, "from-npz", npz, out)[0] == 0
    assert "warning" not in run_cli(capsys, "validate", out)[1]


def test_a_keras_shaped_array_now_fits_the_lc_model(tmp_path, capsys):
    """The bug: (n, 28, 28, 1) stored as 28 channels of 28x1, refused only by the model."""
    from distbelief_mpi.cli import main as distbelief_main

    npz = tmp_path / "keras.npz"
    save_images(npz, (28, 28, 1))
    job = Path(__file__).resolve().parents[2] / "jobs" / "fashion_lc_partitioned.toml"
    for layout, code, fragment in (
        ([], 0, "out 8x24x24"),
        (["--layout", "nchw"], 2, "patch 5 does not fit a 28x1 input"),
    ):
        out = tmp_path / f"{len(layout)}.h5"
        assert run_cli(capsys, "from-npz", npz, out, *layout)[0] == 0
        assert distbelief_main(["plan", str(job), "-n", "6", "--set", f"data.path={out}"]) == code
        assert fragment in "".join(capsys.readouterr())
