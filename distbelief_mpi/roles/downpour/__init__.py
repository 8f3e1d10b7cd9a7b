"""Downpour SGD (the paper's section 4.1): asynchronous replicas and a sharded parameter server.

run.py orchestrates every rank; shard.py is the server (Adagrad per push); replica.py and
hooks.py are a model replica's loop; comm_worker.py overlaps its transfers; checkpoints.py is
the lead's side of checkpoints; summary.py builds summary.json.
"""

from .run import run_downpour

__all__ = ["run_downpour"]
