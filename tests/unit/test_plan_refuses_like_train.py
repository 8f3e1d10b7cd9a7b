"""`distbelief plan`, train's set-up and `data_tools validate` refuse a broken dataset file
with one message; only an absent file is something plan can do without."""

import h5py
import numpy as np
import pytest

from data_tools.cli import main as data_tools_main
from distbelief_mpi.cli import main as distbelief_main
from distbelief_mpi.data.hdf5 import write_dataset
from distbelief_mpi.errors import DatasetError
from distbelief_mpi.train import load_and_plan


def good_file(path):
    x, y = np.zeros((8, 1, 4, 4), np.uint8), np.arange(8) % 2
    common = dict(name="t", source="test", n_classes=2, input_shape=(1, 4, 4), x_scale=1.0, synthetic=True)
    write_dataset(path, x_train=x, y_train=y, x_test=x[:3], y_test=y[:3], **common)
    return path


def drop_attr(f):
    del f.attrs["x_scale"]


def newer_schema(f):
    f.attrs["schema_version"] = 2


def wrong_shape(f):
    f.attrs["input_shape"] = np.array([1, 4, 5])


def empty_test(f):
    del f["test/x"], f["test/y"]
    f.create_dataset("test/x", shape=(0, 1, 4, 4), dtype=np.uint8)
    f.create_dataset("test/y", shape=(0,), dtype=np.uint8)


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (drop_attr, "missing root attribute 'x_scale'"),
        (newer_schema, "unsupported schema_version 2"),
        (wrong_shape, "/train/x has shape (8, 1, 4, 4), expected (n, 1, 4, 5)"),
        (empty_test, "/test/x is empty"),
    ],
)
def test_one_message_from_plan_train_and_validate(tmp_path, capsys, damage, fragment):
    data = good_file(tmp_path / "d.h5")
    with h5py.File(data, "a") as f:
        damage(f)
    job = tmp_path / "job.toml"
    job.write_text(f'[data]\npath = "{data}"\n[run]\nsteps = 1\n')
    expected = f"error: {data}: "
    assert data_tools_main(["validate", str(data)]) == 2
    from_validate = capsys.readouterr().err.strip()
    assert distbelief_main(["plan", str(job), "-n", "1"]) == 2
    from_plan = capsys.readouterr().err.strip()
    with pytest.raises(DatasetError) as from_train:
        load_and_plan(str(job), [], 1, 0)
    assert from_plan == from_validate == f"error: {from_train.value}"
    assert from_plan.startswith(expected) and fragment in from_plan


def test_an_absent_file_is_a_note_for_plan_only(tmp_path, capsys):
    data = tmp_path / "later.h5"
    job = tmp_path / "job.toml"
    job.write_text(f'[data]\npath = "{data}"\n[run]\nsteps = 1\n')
    assert distbelief_main(["plan", str(job), "-n", "1"]) == 0
    assert f"parameter ranges need the dataset (or --input-shape and --classes): {data}: file not found" in (
        capsys.readouterr().out
    )
    assert data_tools_main(["validate", str(data)]) == 2
    with pytest.raises(DatasetError, match="file not found"):
        load_and_plan(str(job), [], 1, 0)
