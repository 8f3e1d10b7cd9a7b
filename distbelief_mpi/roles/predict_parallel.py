"""`mpiexec -n P distbelief predict ...`: one model split over P ranks, predicted model-parallel.

Rank p is partition p of the model (image layers in blocks of whole rows, dense layers by units:
model/partition.py, as a partitioned replica trains). Each rank reads only its own block of the
weights from the model file (checkpoint/model_file.read_pieces), reads every batch of the input
itself (the whole batch, as partitions do in training), and the partitions exchange halos and
activations over MPI (model/partitioned.py); the logits arrive on every rank, and rank 0 writes
the outputs. Problems found before predicting (model file, arguments, input) are agreed on by
every rank, so all exit 2 together; NaN or Inf in a batch is seen by every rank alike.
"""

import sys
from pathlib import Path

import numpy as np

from ..api import open_model_file, softmax
from ..checkpoint.model_file import model_path, read_pieces
from ..comm.partition_exchange import MpiExchanger
from ..comm.world import agree_on_errors, init_world
from ..errors import CheckpointError, LayoutError, UserInputError
from ..model.network import evaluation_batch
from ..model.partition import split_model
from ..model.partitioned import PartitionedNetwork
from ..predict import Predictor, check_request, predict_file


def predict_model_parallel(target: str, input_text: str, output: Path, top_k: int, batch_size: int) -> int:
    world_comm, rank, size = init_world()
    error, prepared = None, None
    try:
        prepared = _prepare(target, world_comm, rank, size)
        check_request(prepared[0], input_text, output, top_k, batch_size)
    except UserInputError as exc:
        error = exc
    failures = agree_on_errors(world_comm, error)
    if failures:
        raise UserInputError(failures[0][2]) if error is None else error
    assert prepared is not None
    predictor, path = prepared
    stream = None if rank else sys.stderr  # one progress line, rank 0's
    n = predict_file(predictor, input_text, output, top_k, batch_size, stream=stream, write=rank == 0)
    if rank == 0:
        from ..commands import predicted_line

        print(predicted_line(path, n, predictor.n_classes, output, top_k) + f" ({size} partitions)")
    return 0


def _prepare(target: str, world_comm, rank: int, size: int) -> tuple[Predictor, Path]:
    """This rank's partition of the model, with its block of the weights read from the file."""
    path = model_path(target)
    with open_model_file(path) as (handle, header, network):
        try:
            plans, order = split_model(network, size)
        except LayoutError as exc:  # too few rows or units for `size` partitions, a layer that cannot split
            raise UserInputError(f"{path}: cannot predict on {size} ranks, one partition each: {exc}") from None
        block = np.empty(order.offsets[rank + 1] - order.offsets[rank], np.float32)
        pieces = [
            (position - order.offsets[rank], start, length)
            for position, start, length in order.segments(order.offsets[rank], order.offsets[rank + 1])
        ]
        read_pieces(handle, network, path, pieces, block)
    if not np.all(np.isfinite(block)):
        raise CheckpointError(f"{path}: the weights hold NaN or Inf values")
    part = PartitionedNetwork(network, plans, rank, MpiExchanger(world_comm, network.dtype))
    # the same batch on every partition (they exchange batch by batch): the smallest any needs
    batch = min(evaluation_batch([plan.sublayers[p] for plan in plans], network.n_classes, True) for p in range(size))
    scale = np.float32(header.x_scale)

    def probs_of(x: np.ndarray) -> np.ndarray:
        scaled = np.asarray(x).astype(np.float32)
        if scale != 1.0:
            scaled *= scale
        return softmax(part._forward_logits(block, scaled))  # forward only: PartitionedNetwork's own pass

    return Predictor(header.input_shape, header.n_classes, batch, probs_of), path
