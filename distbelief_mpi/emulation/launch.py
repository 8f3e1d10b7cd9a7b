"""Launch MPI jobs onto emulated hosts (hosts.py), on the MPI's network path.

MPICH (Hydra): `-launcher ssh -launcher-exec STANDIN` starts one proxy per host through the
stand-in; the proxies connect back to `-localhost`, the bridge's address. UCX moves data
through shared memory even across namespaces (it finds the peer's segments by pid), so
`UCX_TLS=tcp,self` forces the network between hosts; within a host MPICH's own shared memory
is still used, as on a real node.

Open MPI (mpirun/ORTE): `--mca plm_rsh_agent STANDIN`, TCP (btl tcp, pml ob1) restricted to
the emulated subnet for both the daemons' out-of-band channel and the data.
"""

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
        subnet = f"{hosts.subnet}.0/24"
        return [
            mpiexec, "--allow-run-as-root", "--oversubscribe", "-n", str(total), "--host", placement,
            "--mca", "plm_rsh_agent", str(hosts.launcher), "--mca", "pml", "ob1",
            "--mca", "btl", "tcp,vader,self", "--mca", "btl_tcp_if_include", subnet,
            "--mca", "oob_tcp_if_include", subnet, "-x", "UCX_TLS=tcp,self",
        ]  # fmt: skip
    env = [item for key, value in network_env().items() for item in ("-genv", key, value)]
    return [
        mpiexec, "-launcher", "ssh", "-launcher-exec", str(hosts.launcher),
        "-localhost", hosts.bridge_address, "-hosts", placement, "-n", str(total), *env,
    ]  # fmt: skip
