"""A dataset file's content_sha256 (data/schema.ContentDigest): written by the writer block by
block, the same however the rows were appended, checked by validate, recorded in model.h5."""

import h5py
import numpy as np
import pytest

from distbelief_mpi.data.hdf5 import read_info, validate, write_dataset
from distbelief_mpi.data.schema import ContentDigest
from distbelief_mpi.data.writer import DatasetWriter
from distbelief_mpi.errors import DatasetError

RNG = np.random.default_rng(0)
X = {
    "train": RNG.integers(0, 256, (50, 1, 4, 4), dtype=np.uint8),
    "test": RNG.integers(0, 256, (7, 1, 4, 4), dtype=np.uint8),
}
Y = {"train": RNG.integers(0, 3, 50), "test": RNG.integers(0, 3, 7)}
HEADER = dict(name="tiny", source="test", n_classes=3, input_shape=(1, 4, 4), x_scale=1 / 255, synthetic=True)


def write_whole(path):
    write_dataset(path, x_train=X["train"], y_train=Y["train"], x_test=X["test"], y_test=Y["test"], **HEADER)


def test_the_digest_does_not_depend_on_how_rows_were_appended(tmp_path):
    write_whole(tmp_path / "whole.h5")
    n_rows = {"train": 50, "test": 7}
    with DatasetWriter(tmp_path / "blocks.h5", x_dtype=np.uint8, n_rows=n_rows, **HEADER) as writer:
        writer.append("test", X["test"][:3], Y["test"][:3])  # splits interleaved, uneven blocks
        for lo in range(0, 50, 13):
            writer.append("train", X["train"][lo : lo + 13], Y["train"][lo : lo + 13])
        writer.append("test", X["test"][3:], Y["test"][3:])
    whole, blocks = read_info(tmp_path / "whole.h5").content_sha256, read_info(tmp_path / "blocks.h5").content_sha256
    assert len(whole) == 64 and whole == blocks
    digest = ContentDigest()
    for split in ("train", "test"):
        digest.update(split, "x", X[split])
        digest.update(split, "y", Y[split].astype(np.uint8))
    assert digest.hexdigest() == whole


def test_validate_refuses_contents_changed_after_writing(tmp_path):
    path = tmp_path / "d.h5"
    write_whole(path)
    assert validate(path).content_sha256
    with h5py.File(path, "r+") as f:  # a valid edit (fletcher32 recomputed): only the digest can tell
        f["/train/y"][0] = (int(f["/train/y"][0]) + 1) % 3
    with pytest.raises(DatasetError, match="do not match the file's content_sha256"):
        validate(path)


def test_a_file_without_a_digest_still_validates(tmp_path):
    path = tmp_path / "old.h5"
    write_whole(path)
    with h5py.File(path, "r+") as f:
        del f.attrs["content_sha256"]
    assert validate(path).content_sha256 == ""


def test_the_model_file_records_the_digest_as_the_dataset_identity(tmp_path):
    from distbelief_mpi.checkpoint.model_file import dataset_attrs

    path = tmp_path / "d.h5"
    write_whole(path)
    assert dataset_attrs(read_info(path))["dataset_sha256"] == read_info(path).content_sha256 != ""
