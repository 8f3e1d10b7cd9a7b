"""A private multi-node Slurm cluster on emulated hosts (distbelief_mpi/emulation): one slurmd per
host, inside the host's network namespace and with its hostname (NodeName=hN, NodeAddr = the
host's address); slurmctld and munged on this machine. slurmctld listens on every address, so
the slurmds reach it on the bridge's address (SlurmctldHost=<this machine>(bridge address)).
One munged serves every node: `ip netns exec` separates the network, not the file system, so
its unix socket is reachable from every host.

    with emulated_slurm(2, name="slm", subnet="10.232.0") as cluster:
        cluster.sbatch(script, "--nodes=2", cwd=..., env=network_env())  # UCX on TCP between hosts

Two things differ from a slurmd on this machine, both because `ip netns exec` gives each command
a mount namespace of its own with a fresh /sys:
- the cgroup file systems are not mounted there, so cgroup.conf names Slurm's cgroup plugin
  instead of letting slurmd detect one (see write_config);
- each slurmd bind-mounts the cluster's own hosts and resolv.conf over /etc's, inside its mount
  namespace only: every job it starts resolves the node names, as on a real cluster.

Tear-down, even on an exception: the jobs cancelled, the daemons stopped, then the namespaces
removed (EmulatedHosts.down kills whatever still runs in them).
"""

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distbelief_mpi.emulation import EmulatedHosts
from tests.slurm.cluster import CPUS, SlurmCluster


class EmulatedSlurmCluster(SlurmCluster):
    def __init__(self, hosts: EmulatedHosts, cpus: int = CPUS):
        nodes = {host: hosts.address(host) for host in hosts.names}
        super().__init__(cpus=cpus, nodes=nodes, controller_address=hosts.bridge_address)
        self.hosts = hosts
        self.etc = self.base / "etc"  # the hosts' /etc/hosts and /etc/resolv.conf

    def slurmd_argv(self, node: str) -> list[str]:
        """slurmd on its host, with the cluster's name files over /etc's (its mount namespace only)."""
        binds = " && ".join(f"mount --bind {self.etc / name} /etc/{name}" for name in ("hosts", "resolv.conf"))
        slurmd = super().slurmd_argv(node)
        return self.hosts.command_on(node, ["sh", "-c", f'{binds} && exec "$@"', "sh", *slurmd])

    def write_config(self) -> None:
        super().write_config()
        # slurmd 22.05 loads a cgroup plugin even when no other plugin uses one, and its default
        # (autodetect) refuses the unmounted /sys/fs/cgroup of a namespace ("No filesystem mounted
        # on /sys/fs/cgroup"). Naming the v1 plugin skips the detection; with proctrack/linuxproc
        # and task/none it never creates a cgroup.
        (self.base / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\n")
        self._write_name_files()

    def _write_name_files(self) -> None:
        """The hosts know each other by name, as a cluster's nodes do (Hydra, inside an
        allocation, looks up the node names Slurm gives it), and have no name server: with this
        machine's resolv.conf, every lookup from a host waited 20 s for a server it cannot reach."""
        self.etc.mkdir(exist_ok=True)
        names = {"localhost": "127.0.0.1", self.controller: self.controller_address, **self.nodes}
        (self.etc / "hosts").write_text("".join(f"{address} {name}\n" for name, address in names.items()))
        (self.etc / "resolv.conf").write_text("# the emulated hosts have no name server (tests/slurm/multinode.py)\n")


@contextmanager
def emulated_slurm(n_hosts: int, name: str, subnet: str) -> Iterator[EmulatedSlurmCluster]:
    """n_hosts emulated hosts with a slurmd each, torn down on leaving; raises if a process of the
    cluster outlived its stop (its files are kept then, to look at)."""
    with EmulatedHosts(n_hosts, name=name, subnet=subnet) as hosts:
        cluster = EmulatedSlurmCluster(hosts)
        left: list[str] = []
        try:
            cluster.start()
            yield cluster
        finally:
            left = cluster.stop() + still_on_hosts(hosts)
            if not left:
                shutil.rmtree(cluster.base, ignore_errors=True)
        if left:
            raise RuntimeError(f"processes left after stopping the Slurm cluster: {left} (files in {cluster.base})")


def still_on_hosts(hosts: EmulatedHosts) -> list[str]:
    """What still runs on the hosts once the cluster has stopped (a job step, a rank): nothing
    should; hosts.down kills it, and the caller reports it."""
    found = []
    for host in hosts.names:
        listed = subprocess.run(["ip", "netns", "pids", hosts.namespace(host)], capture_output=True, text=True)
        for pid in listed.stdout.split():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue  # exited meanwhile
            found.append(f"{host}: pid {pid}: {command.strip()}")
    return found
