"""Split-phase transfers (comm/pipelined.py) against real shards: nothing lost, nothing doubled.

Ranks: S shards (fixed-rate SGD at rate 1), then replicas. Each replica runs STEPS "steps" of
known integer gradients through PipelinedTransfers.advance (random short naps between steps, so
phases complete at any point), then drains and pushes what is left synchronously. Whatever the
interleaving, the shards' final parameters must equal the initial ones minus every gradient
(integers: exact), and the steps the shards count must equal the steps taken. Every copy a
replica takes must be one the shards published: with rate-1 SGD on integer gradients, a copy
of version v of a shard's slice holds integers."""

import time

import numpy as np

from distbelief_mpi.comm.pipelined import PipelinedTransfers
from distbelief_mpi.config import Optimizer
from tests.mpi.programs.ps_common import run_ps

STEPS = 300


def main(world_comm, args):
    n_shards, n_params = int(args[0]), int(args[1])
    initial = np.arange(n_params, dtype=np.float32)
    optimizer = Optimizer(server_rule="sgd", server_learning_rate=1.0)
    return run_ps(world_comm, n_shards, initial, optimizer, replica)


def replica(endpoint, replica_id: int, ranges) -> dict:
    n_params = ranges[-1][1]
    pieces = [(s, 0, start, stop - start) for s, (start, stop) in enumerate(ranges)]
    transfers = PipelinedTransfers(endpoint, pieces, n_params)
    rng = np.random.default_rng(replica_id)
    accrued, params = np.zeros(n_params, np.float32), np.zeros(n_params, np.float32)
    steps, base = [0] * len(pieces), [0] * len(pieces)
    total = np.zeros(n_params, np.float64)
    takes = 0
    for step in range(STEPS):
        grad = rng.integers(-2, 3, n_params).astype(np.float32)
        accrued += grad
        total += grad
        steps = [count + 1 for count in steps]
        versions = transfers.advance(accrued, steps, base, claim=step % 2 == 0, params=params)
        if versions is not None:
            takes += 1
            assert np.array_equal(params, np.round(params)), "a copy that was never published"
        time.sleep(rng.random() * 3e-4)
    transfers.drain(accrued, steps, base)
    for shard_id, (start, stop) in enumerate(ranges):  # what is left, synchronously
        if steps[shard_id]:
            endpoint.push(shard_id, accrued[start:stop], 0, steps[shard_id])
    return {
        "replica_id": replica_id,
        "total": total.tolist(),
        "steps": STEPS,
        "takes": takes,
        "pipelined_pushes": transfers.pushes,
        "deferred": transfers.deferred,
    }
