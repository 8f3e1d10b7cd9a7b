"""Under mpiexec -n P: one replica split over P real ranks (MPI exchanges). Every rank checks
that its partition's loss and gradient block equal the whole network's (float64) and reports
the bytes it sent, for the test to compare with the layer geometry.

    args: MODEL [AxB]   (AxB: image layers in A x B blocks of rows x columns; default whole rows)"""

import numpy as np

from distbelief_mpi.comm.partition_exchange import MpiExchanger
from distbelief_mpi.model.network import build_network
from distbelief_mpi.model.partition import param_order, plan_partitions
from distbelief_mpi.model.partitioned import PartitionedNetwork
from distbelief_mpi.model.spec import LayerSpec, parse_grid

MODELS = {
    "mlp": ((30,), (LayerSpec("dense", units=11, activation="tanh"), LayerSpec("dense", units=7, activation="relu"))),
    "local": (
        (2, 16, 12),
        (
            LayerSpec("local", filters=3, patch=3, stride=1, activation="tanh"),
            LayerSpec("maxpool", size=2, stride=2),
            LayerSpec("lcn", size=3),
            LayerSpec("local", filters=2, patch=2, stride=1, activation="relu"),
            LayerSpec("dense", units=9, activation="sigmoid"),
        ),
    ),
}


def main(world_comm, args):
    shape, layers = MODELS[args[0]]
    network = build_network(layers, shape, n_classes=6, dtype=np.float64)
    parts, part = world_comm.Get_size(), world_comm.Get_rank()
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((9,) + shape), rng.integers(0, 6, 9)
    params = network.init_params(2)
    whole_grad = np.empty_like(params)
    whole_loss, whole_correct = network.loss_and_grad(params, x, y, whole_grad)
    grid = parse_grid(args[1]) if len(args) > 1 else None
    plans = plan_partitions(network, parts, grid)
    order = param_order(network, plans)
    block = slice(order.offsets[part], order.offsets[part + 1])
    mine = PartitionedNetwork(network, plans, part, MpiExchanger(world_comm, np.float64))
    grad = np.empty(mine.n_params)
    loss, correct = mine.loss_and_grad(order.from_canonical(params)[block], x, y, grad)
    expected = order.from_canonical(whole_grad)[block]
    return {
        "loss_error": abs(loss - whole_loss) / abs(whole_loss),
        "correct_equal": correct == whole_correct,
        "grad_error": float(np.max(np.abs(grad - expected), initial=0.0)),
        "bytes_sent": mine.bytes_sent,
        "n_params": mine.n_params,
    }
