"""Sandblaster L-BFGS (the paper's section 4.2): a coordinator, shard-side vector operations, and
replicas that compute portions of each batch.

run.py wires every rank; cluster.py is the coordinator's link to shards and replicas (it
performs what optim/evaluation_state.py decides); batch_loop.py runs L-BFGS batch by batch;
shard.py and replica.py are the other two roles; checkpoints.py commits checkpoints.
"""

from .run import run_sandblaster

__all__ = ["run_sandblaster"]
