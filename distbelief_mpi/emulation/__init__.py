"""Emulated hosts on one Linux machine: rehearse a multi-node MPI or Slurm job on a laptop,
and test the network path of the parameter server in CI (docs/multihost.md)."""

from .hosts import EmulatedHosts, unavailable_reason
from .launch import mpiexec_argv, network_env

__all__ = ["EmulatedHosts", "mpiexec_argv", "network_env", "unavailable_reason"]
