"""`digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0..16)."""

import numpy as np

from data_tools import CREATED_BY
from distbelief_mpi.data.hdf5 import write_dataset
from distbelief_mpi.errors import UserInputError

SOURCE = (
    "scikit-learn sklearn.datasets.load_digits: UCI ML hand-written digits "
    "(Alpaydin & Kaynak 1998, CC BY 4.0), 8x8 images with values 0..16"
)


def stratified_split(y: np.ndarray, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx): round(test_fraction * count) of each class go to test.
    Both are shuffled, because replicas train on contiguous slices of the file."""
    test_parts = []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        test_parts.append(members[: int(round(test_fraction * len(members)))])
    test_idx = np.concatenate(test_parts)
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    return rng.permutation(train_idx), rng.permutation(test_idx)


def build_digits(out_path, test_fraction: float = 0.2, seed: int = 0) -> None:
    try:
        from sklearn.datasets import load_digits  # lazy: only this command needs sklearn
    except ImportError:
        raise UserInputError(
            "digits: needs scikit-learn (its bundled copy of the dataset): pip install 'distbelief-mpi[digits]'"
        ) from None

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None, :, :]  # (1797, 1, 8, 8), values 0..16
    y = bunch.target.astype(np.int64)
    train_idx, test_idx = stratified_split(y, test_fraction, np.random.default_rng(seed))
    write_dataset(
        out_path,
        name="digits",
        source=SOURCE,
        n_classes=10,
        input_shape=(1, 8, 8),
        x_train=x[train_idx],
        y_train=y[train_idx],
        x_test=x[test_idx],
        y_test=y[test_idx],
        x_scale=1 / 16,
        synthetic=False,
        extra_attrs={"split_seed": seed, "test_fraction": test_fraction},
        created_by=CREATED_BY,
    )
