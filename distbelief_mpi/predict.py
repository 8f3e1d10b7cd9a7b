"""`distbelief predict MODEL --input X --output P.npy [--top-k K] [--batch-size B]`.

X: a .npy file, or FILE.h5:/dataset/path; (n, *input_shape) numbers in the dataset's raw
units (the model applies x_scale). It is read a batch at a time (a .npy memory-mapped, an
HDF5 dataset sliced), so an input larger than memory is fine.
P.npy: (n, n_classes) float32 probabilities. With --top-k K also P.topk.npy beside it:
(n, K) int32 class indices, most probable first (ties: the lower index first).
Every problem with the input is a UserInputError naming the file (exit 2), and nothing is
written: both outputs go to temporary files renamed only once every batch has passed.
Under `mpiexec -n P` (P > 1) roles/predict_parallel.py runs the same loop with the model split
over the ranks (a Predictor whose probs_of is model-parallel).
"""

import contextlib
import os
import sys
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .api import Model
from .errors import UserInputError
from .runtime.files import atomic_output

PROGRESS_SECONDS = 2.0  # at most one progress line this often, on stderr, for inputs of several batches
# Set by the launchers in every rank: MPICH's Hydra (and Slurm's PMI), Open MPI.
WORLD_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


def launched_ranks(environ=os.environ) -> int:
    """The world size mpiexec (or srun) gave this process; 1 without a launcher."""
    for name in WORLD_SIZE_VARIABLES:
        size = environ.get(name, "")
        if size.isdigit() and int(size) > 1:
            return int(size)
    return 1


@contextlib.contextmanager
def open_input(text: str) -> Iterator[tuple[str, object]]:
    """(name for messages, an array-like supporting len(), .shape, .dtype and slicing)."""
    path_text, sep, inner = text.rpartition(":")
    if sep and path_text and not Path(text).exists():
        with _hdf5_dataset(Path(path_text), inner) as dataset:
            yield f"{path_text}:{inner}", dataset
        return
    yield text, _npy(Path(text))


def _npy(path: Path) -> np.ndarray:
    if not path.exists():
        raise UserInputError(f"{path}: input file not found")
    if path.suffix != ".npy":
        raise UserInputError(f"{path}: expected a .npy file or FILE.h5:/dataset/path")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserInputError(f"{path}: not a readable .npy array ({exc})") from None


@contextlib.contextmanager
def _hdf5_dataset(path: Path, inner: str) -> Iterator[object]:
    import h5py

    if not path.exists():
        raise UserInputError(f"{path}: input file not found")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise UserInputError(f"{path}: not a readable HDF5 file ({exc})") from None
    with handle:
        found = handle.get(inner)
        if not isinstance(found, h5py.Dataset):
            what = "a group" if found is not None else "nothing"
            raise UserInputError(f"{path}: {inner} is {what}, not a dataset (give FILE.h5:/dataset/path)")
        yield found


@dataclass(frozen=True)
class Predictor:
    """What the batch loop needs of a model: one example's shape, the classes, a default batch,
    and probs_of(raw batch (b, *input_shape)) -> (b, n_classes) float32."""

    input_shape: tuple[int, ...]
    n_classes: int
    default_batch: int
    probs_of: Callable[[np.ndarray], np.ndarray]


def single_process(model: Model) -> Predictor:
    return Predictor(
        model.input_shape, model.n_classes, model.default_batch(), lambda x: model.predict(x, batch_size=len(x))
    )


def check_request(predictor: Predictor, input_text: str, output: Path, top_k: int, batch_size: int) -> None:
    """Every problem with the arguments and the input found before any prediction (the input's
    shape and type; NaN or Inf show up batch by batch)."""
    if top_k < 0 or top_k > predictor.n_classes:
        raise UserInputError(f"--top-k {top_k}: must be in [1, {predictor.n_classes}] (the model's classes)")
    if batch_size < 0:
        raise UserInputError(f"--batch-size {batch_size}: must be >= 1")
    if not Path(output).parent.is_dir():
        raise UserInputError(f"{output}: its directory does not exist")
    with open_input(input_text) as (name, x):
        check_input(name, x, predictor.input_shape)


def check_input(name: str, x, input_shape: tuple[int, ...]) -> None:
    """Shape and dtype: (n, *input_shape) of integers or real floats."""
    want = ", ".join(map(str, input_shape))
    dtype = np.dtype(x.dtype)
    if dtype.kind not in "iuf":
        raise UserInputError(
            f"{name}: holds {dtype} values; the model takes numbers (integers or real floats) of shape (n, {want})"
        )
    if len(x.shape) != 1 + len(input_shape) or tuple(x.shape[1:]) != input_shape:
        raise UserInputError(f"{name}: shape {tuple(x.shape)}; the model takes (n, {want}) in its dataset's units")
    if x.shape[0] == 0:
        raise UserInputError(f"{name}: holds no examples")


def predict_file(
    predictor: Predictor,
    input_text: str,
    output: Path,
    top_k: int = 0,
    batch_size: int = 0,
    stream: typing.TextIO | None | typing.Literal["stderr"] = "stderr",
    write: bool = True,
) -> int:
    """Predict every row of the input into `output` (and its .topk.npy); returns the row count.
    write=False: predict without writing (the other ranks of a model-parallel prediction).
    stream: where progress lines go (None: nowhere; "stderr": sys.stderr as it is at call time)."""
    stream = sys.stderr if stream == "stderr" else stream
    check_request(predictor, input_text, output, top_k, batch_size)
    output = Path(output)
    with open_input(input_text) as (name, x), contextlib.ExitStack() as outputs:
        n = int(x.shape[0])
        probs = top = None
        if write:
            probs = _memmap(outputs.enter_context(atomic_output(output)), (n, predictor.n_classes), np.float32)
            if top_k:
                top = _memmap(outputs.enter_context(atomic_output(topk_path(output))), (n, top_k), np.int32)
        _batches(predictor, name, x, probs, top, top_k, batch_size or predictor.default_batch, stream)
        for array in (probs, top):
            if array is not None:
                array.flush()
        del probs, top  # memory maps closed before the renames
    return n


def topk_path(output: Path) -> Path:
    """P.npy -> P.topk.npy."""
    return output.with_name(f"{output.stem}.topk.npy")


def _memmap(path: Path, shape: tuple[int, int], dtype) -> np.ndarray:
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def _batches(predictor: Predictor, name: str, x, probs, top, top_k: int, batch_size: int, stream) -> None:
    """probs[i] <- the probabilities of x[i]; top[i] <- its top-k classes (None: not written)."""
    n = len(x)
    started = last = time.monotonic()
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        block = np.asarray(x[start:stop])
        if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
            bad = start + int(np.argwhere(~np.isfinite(block).reshape(len(block), -1).all(axis=1))[0, 0])
            raise UserInputError(f"{name}: row {bad} holds NaN or Inf")
        batch_probs = predictor.probs_of(block)
        if probs is not None:
            probs[start:stop] = batch_probs
        if top is not None:
            # stable sort on -p: among equal probabilities the lower class index comes first
            top[start:stop] = np.argsort(-batch_probs, axis=1, kind="stable")[:, :top_k]
        now = time.monotonic()
        if stream is not None and stop < n and now - last >= PROGRESS_SECONDS:
            rate = stop / (now - started)
            print(f"predict: {stop:,} / {n:,} examples ({rate:,.0f} examples/s)", file=stream, flush=True)
            last = now
