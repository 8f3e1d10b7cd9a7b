"""`fashion-mnist`: Zalando's Fashion-MNIST from its four gzipped IDX files.

IDX format (big-endian): magic 0x00000803 = unsigned bytes, 3 dims (n, rows, cols) for
images; 0x00000801 = unsigned bytes, 1 dim (n,) for labels; then the raw bytes.
"""

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from data_tools import CREATED_BY
from distbelief_mpi.data.hdf5 import write_dataset
from distbelief_mpi.errors import DatasetError

DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
EXPECTED_COUNTS = {"train": 60_000, "test": 10_000}
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801
IMAGE_SIDE, N_CLASSES = 28, 10

# SHA-256 of each *decompressed* file. These are the upstream zalandoresearch
# Fashion-MNIST files (github.com/zalandoresearch/fashion-mnist, data/fashion/), as
# shipped unchanged by Debian's dataset-fashion-mnist package; computed once with
# `zcat FILE.gz | sha256sum` from /usr/share/datasets/fashion-mnist.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

SOURCE = (
    "Fashion-MNIST by Zalando Research (Xiao, Rasul & Vollgraf 2017), "
    "https://github.com/zalandoresearch/fashion-mnist, MIT licence; "
    "read from the upstream IDX files"
)
INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` or pass --source DIR with the four .gz IDX files"
)


def read_gz(path: Path) -> bytes:
    if not path.is_file():
        raise DatasetError(path, f"file not found; {INSTALL_HINT}")
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(path, f"not a readable gzip file: {e}") from None


def parse_idx(path: Path, raw: bytes, magic: int, n_dims: int) -> np.ndarray:
    """Checks the header and length of decompressed IDX bytes; returns a uint8 view
    shaped by the header dims."""
    header_len = 4 + 4 * n_dims
    if len(raw) < header_len:
        raise DatasetError(path, f"too short for an IDX header ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DatasetError(path, f"bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    expected = header_len + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DatasetError(path, f"IDX header dims {dims} need {expected} bytes, file has {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def check_sha256(path: Path, raw: bytes, expected: dict | None) -> str:
    digest = hashlib.sha256(raw).hexdigest()
    want = None if expected is None else expected.get(path.name)
    if want is not None and digest != want:
        raise DatasetError(
            path, f"SHA-256 of the decompressed file is {digest}, expected {want} (not the upstream Fashion-MNIST file)"
        )
    return digest


def load_split(
    source_dir: Path, split: str, expected_sha256: dict | None, expected_count: int | None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(x (n, 1, 28, 28) uint8, y (n,) uint8, {file name: sha256})."""
    image_file, label_file = (source_dir / name for name in FILES[split])
    raw_x, raw_y = read_gz(image_file), read_gz(label_file)
    x = parse_idx(image_file, raw_x, IMAGE_MAGIC, 3)
    y = parse_idx(label_file, raw_y, LABEL_MAGIC, 1)
    digests = {p.name: check_sha256(p, raw, expected_sha256) for p, raw in ((image_file, raw_x), (label_file, raw_y))}
    if x.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DatasetError(image_file, f"images are {x.shape[1]}x{x.shape[2]}, expected 28x28")
    if len(x) != len(y):
        raise DatasetError(label_file, f"{len(y)} labels for {len(x)} images in {image_file.name}")
    if expected_count is not None and len(x) != expected_count:
        raise DatasetError(image_file, f"{len(x)} images, expected {expected_count}")
    if len(y) and y.max() >= N_CLASSES:
        raise DatasetError(label_file, f"label {int(y.max())} is not in [0, {N_CLASSES})")
    return x[:, None, :, :], y, digests


def build_fashion_mnist(
    out_path,
    source_dir=DEFAULT_SOURCE_DIR,
    expected_sha256: dict | None = FASHION_MNIST_SHA256,
    expected_counts: dict | None = EXPECTED_COUNTS,
    log=None,
) -> None:
    """Tests pass their own expected_sha256 / expected_counts (or None to skip) so a tiny
    generated IDX directory can stand in for the real one; the CLI always uses the
    constants above."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise DatasetError(source_dir, f"directory not found; {INSTALL_HINT}")
    splits, digests = {}, {}
    for split in FILES:
        if log:
            log(f"reading {split} IDX files from {source_dir}")
        count = None if expected_counts is None else expected_counts[split]
        x, y, split_digests = load_split(source_dir, split, expected_sha256, count)
        splits[split] = (x, y)
        digests.update(split_digests)
    extra = {f"sha256:{name}": digest for name, digest in digests.items()}
    write_dataset(
        out_path,
        name="fashion-mnist",
        source=SOURCE,
        n_classes=N_CLASSES,
        input_shape=(1, IMAGE_SIDE, IMAGE_SIDE),
        x_train=splits["train"][0],
        y_train=splits["train"][1],
        x_test=splits["test"][0],
        y_test=splits["test"][1],
        x_scale=1 / 255,
        synthetic=False,
        extra_attrs=extra,
        created_by=CREATED_BY,
    )
