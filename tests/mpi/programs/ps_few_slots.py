"""Replicas outnumber the landing slots (K < R): a replica that finds no free slot keeps accruing
and pushes later. Each replica runs Downpour's push loop (accrue a known integer gradient every
step, try to push each shard's part, defer when refused, push what is left at the end, waiting).
With fixed-rate SGD at rate 1 the final parameters must be the initial ones minus everything
every replica accrued, and each shard must count every step taken: nothing is lost or doubled,
whatever the order in which the slots were won. args: shards slots [chunk] (chunk > 0: pushes
land in chunks of that many elements, replica_endpoint.py)."""

import time

import numpy as np

from distbelief_mpi.config import Optimizer
from tests.mpi.programs.ps_common import run_ps

N_PARAMS, STEPS = 1000, 60


def main(world_comm, args):
    n_shards, landing_slots = int(args[0]), int(args[1])
    chunk = int(args[2]) if len(args) > 2 else 0
    initial = np.arange(N_PARAMS, dtype=np.float32)

    def replica_body(endpoint, replica_id, ranges):
        endpoint.chunk_elements = chunk
        rng = np.random.default_rng(replica_id)
        accrued = np.zeros(N_PARAMS, np.float32)  # (N,) not yet pushed
        accrued_steps = [0] * len(ranges)
        total, deferred = np.zeros(N_PARAMS, np.float64), 0  # everything accrued; pushes refused
        for _ in range(STEPS):
            grad = rng.integers(-3, 4, N_PARAMS).astype(np.float32)
            accrued += grad
            total += grad
            for shard_id, (start, stop) in enumerate(ranges):
                accrued_steps[shard_id] += 1
                if endpoint.try_push(shard_id, accrued[start:stop], 0, accrued_steps[shard_id]):
                    accrued[start:stop], accrued_steps[shard_id] = 0, 0
                else:
                    deferred += 1
            time.sleep(rng.random() * 2e-4)
        for shard_id, (start, stop) in enumerate(ranges):  # the final push waits for a slot
            if accrued_steps[shard_id]:
                endpoint.push(shard_id, accrued[start:stop], 0, accrued_steps[shard_id])
        return {
            "replica_id": replica_id,
            "accrued_sum": total.tolist(),
            "steps": STEPS,
            "pushes": endpoint.pushed,
            "deferred": deferred,
        }

    optimizer = Optimizer(server_rule="sgd", server_learning_rate=1.0)
    return run_ps(world_comm, n_shards, initial, optimizer, replica_body, landing_slots)
