"""Launch MPI jobs onto emulated hosts (hosts.py), on the MPI's network path.

MPICH (Hydra): `-launcher ssh -launcher-exec STANDIN` starts one proxy per host through the
stand-in; the proxies connect back to `-localhost`, the bridge's address. UCX moves data
through shared memory even across namespaces (it finds the peer's segments by pid), so
`UCX_TLS=tcp,self` forces the network between hosts; within a host MPICH's own shared memory
is still used, as on a real node.

Open MPI (mpirun/ORTE): `--mca plm_rsh_agent STANDIN`; the daemons' out-of-band channel and
messages (pml ob1, btl tcp) restricted to the emulated subnet, shared memory (vader) within a
host; one-sided windows through osc ucx, kept on TCP by the same UCX_TLS (_open_mpi_argv).
"""

import os
import shutil
import subprocess

from .hosts import EmulatedHosts


def network_env() -> dict[str, str]:
    """Environment that keeps UCX on TCP between hosts (MPICH's wheel uses the UCX netmod)."""
    return {"UCX_TLS": "tcp,self"}


def mpi_flavour(mpiexec: str) -> str:
    version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True).stdout
    return "openmpi" if ("Open MPI" in version or "OpenRTE" in version) else "mpich"


def mpiexec_argv(hosts: EmulatedHosts, ranks_per_host: list[int], mpiexec: str = "mpiexec") -> list[str]:
    """The launcher's argv up to the program: ranks_per_host[i] ranks on hosts.names[i], world
    ranks in host order (host 1 gets ranks 0 .. n1 - 1, and so on)."""
    if len(ranks_per_host) > hosts.n_hosts or min(ranks_per_host) < 1:
        raise ValueError(f"ranks per host {ranks_per_host}: {hosts.n_hosts} hosts, each needs >= 1 rank")
    total = sum(ranks_per_host)
    placement = ",".join(f"{host}:{n}" for host, n in zip(hosts.names, ranks_per_host))
    if mpi_flavour(mpiexec) == "openmpi":
        return _open_mpi_argv(hosts, placement, total, mpiexec)
    env = [item for key, value in network_env().items() for item in ("-genv", key, value)]
    return [
        mpiexec, "-launcher", "ssh", "-launcher-exec", str(hosts.launcher),
        "-localhost", hosts.bridge_address, "-hosts", placement, "-n", str(total), *env,
    ]  # fmt: skip


def _open_mpi_argv(hosts: EmulatedHosts, placement: str, total: int, mpiexec: str) -> list[str]:
    """mpirun is called by its real path: Open MPI takes an absolute path's prefix for the
    daemons' (a venv's bin/mpiexec linked to /usr/bin/mpiexec.openmpi would start VENV/bin/orted).
    Messages: ob1 over TCP between hosts (restricted to the emulated subnet), vader within one.
    Windows: osc ucx over UCX's TCP (osc rdma needs an RDMA network and osc pt2pt refuses
    MPI_THREAD_MULTIPLE, mpi4py's default; Debian's openmpi-mca-params.conf disables both ucx
    and pt2pt, the command line overrides it), osc sm for a window within one host. Every host's
    daemon counts the machine's cores as its own, so Open MPI would not see the oversubscription
    and would spin while waiting: mpi_yield_when_idle (measured: twice the Downpour job's speed)."""
    found = shutil.which(mpiexec) or mpiexec
    subnet = f"{hosts.subnet}.0/24"
    ucx_env = [item for key, value in network_env().items() for item in ("-x", f"{key}={value}")]
    return [
        os.path.realpath(found), "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
        "-n", str(total), "--host", placement, "--mca", "plm_rsh_agent", str(hosts.launcher),
        "--mca", "oob_tcp_if_include", subnet,
        "--mca", "pml", "ob1", "--mca", "btl", "tcp,vader,self", "--mca", "btl_tcp_if_include", subnet,
        "--mca", "osc", "ucx,sm", "--mca", "mpi_yield_when_idle", "1", *ucx_env,
    ]  # fmt: skip
