"""Every replica pushes known integer-valued gradients at random moments, some with try_push
(skipping a busy slot), the rest waiting. With fixed-rate SGD at rate 1 on the shards, the
final parameters must equal the initial ones minus the exact sum of everything pushed, in
whatever order the pushes arrived (integers are exact in float32, so order cannot matter).
args: shards [chunk]: with chunk > 0, pushes land in chunks of that many elements
(replica_endpoint.py), the shards applying each as it lands."""

import time

import numpy as np

from distbelief_mpi.config import Optimizer
from tests.mpi.programs.ps_common import run_ps

N_PARAMS, N_PUSHES = 1000, 40


def main(world_comm, args):
    n_shards, chunk = int(args[0]), int(args[1]) if len(args) > 1 else 0
    initial = np.arange(N_PARAMS, dtype=np.float32)

    def replica_body(endpoint, replica_id, ranges):
        endpoint.chunk_elements = chunk
        rng = np.random.default_rng(replica_id)
        total = np.zeros(N_PARAMS, np.float64)
        for _ in range(N_PUSHES):
            grad = rng.integers(-3, 4, N_PARAMS).astype(np.float32)
            for shard_id, (start, stop) in enumerate(ranges):
                if rng.random() < 0.5:
                    endpoint.push(shard_id, grad[start:stop], 0, 1)
                elif not endpoint.try_push(shard_id, grad[start:stop], 0, 1):
                    continue  # busy slot: this part of the gradient is not sent
                total[start:stop] += grad[start:stop]
            time.sleep(rng.random() * 1e-3)
        return {"pushed_sum": total.tolist(), "pushes": sum(endpoint.pushed)}

    return run_ps(world_comm, n_shards, initial, Optimizer(server_rule="sgd", server_learning_rate=1.0), replica_body)
