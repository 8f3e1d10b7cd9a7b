"""Pushes landing in chunks, some holding a NaN or an Inf in a chunk the shard reaches after it
has applied the ones before: each such push must be rejected whole, the parameters AND Adagrad's
accumulators left as if it never came. One replica pushes a fixed sequence (waiting until each
is taken); the shard's final parameters and accumulators must equal single-process Adagrad over
the finite pushes only. args: chunk (elements per chunk)."""

import numpy as np

from distbelief_mpi.comm.control import Backoff
from distbelief_mpi.config import Optimizer
from distbelief_mpi.kernels import reference
from tests.mpi.programs.ps_common import run_ps

N_PARAMS = 1000
OPT = Optimizer(server_rule="adagrad", server_learning_rate=0.05, adagrad_initial_accumulator=0.1, adagrad_epsilon=1e-8)
# (where the bad value goes, which): None = a finite push. The bad ones sit in the last chunk,
# the middle and the first, so the shard has applied 0, some or all but one chunk before it.
SEQUENCE = [None, (N_PARAMS - 1, np.nan), None, (N_PARAMS // 2, np.inf), (0, -np.inf), None]


def gradients() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    grads = []
    for bad in SEQUENCE:
        grad = rng.normal(size=N_PARAMS).astype(np.float32)
        if bad is not None:
            grad[bad[0]] = bad[1]
        grads.append(grad)
    return grads


def main(world_comm, args):
    chunk = int(args[0])
    initial = np.linspace(-1, 1, N_PARAMS, dtype=np.float32)

    def replica_body(endpoint, replica_id, ranges):
        endpoint.chunk_elements = chunk
        for grad in gradients():
            endpoint.push(0, grad, 0, 1)
            wait = Backoff()
            while not endpoint.slot_free(0):  # taken (applied or rejected) before the next
                wait.sleep()
        params, acc = initial.copy(), np.full(N_PARAMS, OPT.adagrad_initial_accumulator, np.float32)
        for grad, bad in zip(gradients(), SEQUENCE):
            if bad is None:
                params, acc = reference.adagrad_apply(params, grad, acc, OPT.server_learning_rate, OPT.adagrad_epsilon)
        return {"expected_params": params.tolist(), "expected_accumulator": acc.tolist()}

    record = run_ps(
        world_comm, 1, initial, OPT, replica_body, shard_extra=lambda shard: {"accumulator": shard.accumulator.tolist()}
    )
    return record
