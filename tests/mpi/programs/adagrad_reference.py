"""One replica, a fixed schedule (fetch, gradient on a digits minibatch, push, wait until the
shards applied it): Adagrad on the sharded server must equal single-process Adagrad."""

import numpy as np

from distbelief_mpi.comm.control import Backoff
from distbelief_mpi.config import Optimizer
from distbelief_mpi.data.hdf5 import read_info, read_split
from distbelief_mpi.kernels import reference
from distbelief_mpi.model.network import build_network
from distbelief_mpi.model.spec import LayerSpec
from tests.mpi.programs.ps_common import run_ps

STEPS, BATCH = 25, 16
OPT = Optimizer(server_rule="adagrad", server_learning_rate=0.05, adagrad_initial_accumulator=0.1, adagrad_epsilon=1e-8)


def main(world_comm, args):
    n_shards, data = int(args[0]), args[1]
    info = read_info(data)
    network = build_network((LayerSpec("dense", units=16, activation="tanh"),), info.input_shape, info.n_classes)
    initial = network.init_params(3)
    x, y = read_split(data, "train", 0, STEPS * BATCH)

    def replica_body(endpoint, replica_id, ranges):
        params, grad = np.empty_like(initial), np.empty_like(initial)
        for step in range(STEPS):
            for shard_id, (start, stop) in enumerate(ranges):
                endpoint.fetch(shard_id, params[start:stop])
            batch = slice(step * BATCH, (step + 1) * BATCH)
            network.loss_and_grad(params, x[batch], y[batch], grad)
            for shard_id, (start, stop) in enumerate(ranges):
                endpoint.push(shard_id, grad[start:stop], step, 1)
            for shard_id in range(len(ranges)):  # fixed schedule: wait until applied
                wait = Backoff()
                while not endpoint.slot_free(shard_id):
                    wait.sleep()
        for shard_id, (start, stop) in enumerate(ranges):
            endpoint.fetch(shard_id, params[start:stop])
        expected = single_process_adagrad(network, initial, x, y)
        return {
            "max_abs_diff": float(np.max(np.abs(params - expected))),
            "max_abs_param": float(np.max(np.abs(expected))),
        }

    return run_ps(world_comm, n_shards, initial, OPT, replica_body)


def single_process_adagrad(network, initial, x, y):
    params, grad = initial.copy(), np.empty_like(initial)
    acc = np.full_like(initial, OPT.adagrad_initial_accumulator)
    for step in range(STEPS):
        batch = slice(step * BATCH, (step + 1) * BATCH)
        network.loss_and_grad(params, x[batch], y[batch], grad)
        params, acc = reference.adagrad_apply(params, grad, acc, OPT.server_learning_rate, OPT.adagrad_epsilon)
    return params
