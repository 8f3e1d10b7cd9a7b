"""A replica pushes NaN, +Inf and finite gradients; the non-finite ones must be rejected and
counted, the finite ones applied, and the parameters must stay finite."""

import numpy as np

from distbelief_mpi.config import Optimizer
from tests.mpi.programs.ps_common import run_ps


def main(world_comm, args):
    initial = np.zeros(64, np.float32)

    def replica_body(endpoint, replica_id, ranges):
        for value in (np.nan, 1.0, np.inf, 2.0):
            grad = np.full(64, 1.0, np.float32)
            grad[5] = value
            for shard_id, (start, stop) in enumerate(ranges):
                endpoint.push(shard_id, grad[start:stop], 0, 1)
        return {}

    return run_ps(world_comm, 2, initial, Optimizer(server_rule="sgd", server_learning_rate=1.0), replica_body)
