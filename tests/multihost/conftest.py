"""Emulated hosts for tests/multihost (distbelief_mpi/emulation): network namespaces with their
own hostname behind a bridge, MPI launched through an ssh stand-in, UCX kept on TCP between hosts.
Tests skip with the reason where namespaces cannot be made (not root)."""

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from distbelief_mpi.emulation import EmulatedHosts, mpiexec_argv, unavailable_reason
from tests.mpi.runner import MpiRun, finish_mpi, mpiexec_path, start_mpi


def instance_name() -> tuple[str, str]:
    """(name, subnet) of this pytest process's hosts: two test sessions at once must not share
    interface names or addresses."""
    pid = os.getpid()
    return f"t{pid % 10**6}", f"10.231.{pid % 250}"


@pytest.fixture(scope="session")
def namespaces_usable() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"emulated hosts unavailable: {reason}")


@pytest.fixture
def emulated_hosts(namespaces_usable):
    """A factory: `with emulated_hosts(2, rate="1gbit") as hosts:`; torn down even on failure."""

    @contextmanager
    def make(n_hosts: int, rate: str | None = None):
        name, subnet = instance_name()
        with EmulatedHosts(n_hosts, rate=rate, name=name, subnet=subnet) as hosts:
            yield hosts

    return make


def run_across(
    hosts: EmulatedHosts,
    ranks_per_host: list[int],
    target: list[str],
    tmp_path: Path,
    timeout: float = 180,
    env: dict | None = None,
    cwd: Path | None = None,
) -> MpiRun:
    """tests.mpi.runner.run_mpi, with ranks_per_host[i] ranks on host i (world ranks in host order)."""
    launch = mpiexec_argv(hosts, ranks_per_host, mpiexec_path())
    extra = {"cwd": cwd} if cwd else {}
    started = start_mpi(sum(ranks_per_host), target, tmp_path, timeout, env, launch=launch, **extra)
    return finish_mpi(started, timeout)
