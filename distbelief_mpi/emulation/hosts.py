"""H emulated hosts: network namespaces with their own address, each behind a veth pair into one
bridge on the machine, and an ssh stand-in that runs a command "on" a host.

    machine (bridge NAMEbr, SUBNET.1/24)
      |-- veth NAMEv1 <-> eth0 in netns NAME-h1 (SUBNET.11), hostname h1
      |-- veth NAMEv2 <-> eth0 in netns NAME-h2 (SUBNET.12), hostname h2

Processes started on a host (`command_on`) get its namespace and, through `unshare --uts`, a
hostname of their own: MPI then sees distinct nodes, uses shared memory only within a host and
the network between hosts. `rate` (tc syntax, e.g. "1gbit") shapes each host's link both ways
with a token bucket (tbf; netem is not in every kernel). Needs root (or CAP_NET_ADMIN and
CAP_SYS_ADMIN) and iproute2; `unavailable_reason()` says why not where not.

Tear-down (`down`, or leaving the `with` block, even on an exception) kills what still runs in
the namespaces and deletes them, the veths and the bridge; `up` first removes leftovers of a
previous instance of the same name (a test killed half-way).
"""

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

DEFAULT_NAME = "dbm"
DEFAULT_SUBNET = "10.231.0"  # a /24 of the private range, only ever on our own bridge
FIRST_HOST_OCTET = 11


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable_reason() -> str | None:
    """None where namespaces, veths and a bridge can be made here; otherwise why not."""
    for tool in ("ip", "unshare", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2 / util-linux)"
    probe = f"dbmprobe{os.getpid() % 100000}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace (needs root or CAP_SYS_ADMIN): {made.stderr.strip()}"
    try:
        link = _ip("link", "add", f"{probe}b", "type", "bridge", check=False)
        if link.returncode != 0:
            return f"cannot create a bridge (needs CAP_NET_ADMIN): {link.stderr.strip()}"
        _ip("link", "del", f"{probe}b", check=False)
    finally:
        _ip("netns", "del", probe, check=False)
    return None


class EmulatedHosts:
    """`with EmulatedHosts(2, rate="1gbit") as hosts:` ... hosts.names == ["h1", "h2"]."""

    def __init__(self, n_hosts: int, rate: str | None = None, name: str = DEFAULT_NAME, subnet: str = DEFAULT_SUBNET):
        if not 1 <= n_hosts <= 200:
            raise ValueError(f"n_hosts must be in [1, 200], not {n_hosts}")
        if len(name) > 8 or not (name.isascii() and name.isalnum()):
            raise ValueError(f"name {name!r}: at most 8 letters or digits (it prefixes interface names)")
        octets = subnet.split(".")
        if len(octets) != 3 or not all(o.isdigit() and int(o) <= 255 for o in octets):
            raise ValueError(f"subnet {subnet!r}: the first three octets of a /24, e.g. {DEFAULT_SUBNET!r}")
        self.n_hosts, self.rate, self.name, self.subnet = n_hosts, rate, name, subnet
        self.names = [f"h{i + 1}" for i in range(n_hosts)]
        self.bridge = f"{name}br"
        self.bridge_address = f"{subnet}.1"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{name}-hosts-"))
        self.launcher = self.workdir / "ssh-standin"

    # -- naming ----------------------------------------------------------------------------
    def namespace(self, host: str) -> str:
        return f"{self.name}-{host}"

    def address(self, host: str) -> str:
        return f"{self.subnet}.{FIRST_HOST_OCTET + self.names.index(host)}"

    def command_on(self, host: str, argv: list[str]) -> list[str]:
        """argv run on `host`: in its namespace, with its hostname."""
        inner = f"hostname {shlex.quote(host)} && exec {shlex.join(argv)}"
        return ["ip", "netns", "exec", self.namespace(host), "unshare", "--uts", "sh", "-c", inner]

    # -- life --------------------------------------------------------------------------------
    def __enter__(self) -> "EmulatedHosts":
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        self.down(quiet=True)
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for index, host in enumerate(self.names, start=1):
                self._add_host(index, host)
            self._write_launcher()
        except subprocess.CalledProcessError as error:
            self.down(quiet=True)
            raise RuntimeError(f"emulated hosts: `{shlex.join(error.cmd)}` failed: {error.stderr.strip()}") from error

    def _add_host(self, index: int, host: str) -> None:
        ns, veth = self.namespace(host), f"{self.name}v{index}"
        _ip("netns", "add", ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        # No default route: the hosts reach each other and the bridge only, so a lookup of an
        # unknown name fails at once (network unreachable) instead of waiting out a DNS timeout.
        if self.rate:  # both directions: out of the host (its eth0), into it (the bridge's veth)
            self._shape(["tc", "-n", ns], "eth0")
            self._shape(["tc"], veth)

    def _shape(self, tc: list[str], device: str) -> None:
        # burst: at least rate x 1 ms (tbf needs a bucket that holds a timer tick's worth)
        command = [*tc, "qdisc", "add", "dev", device, "root", "tbf", "rate", str(self.rate)]
        command += ["burst", "256kb", "latency", "100ms"]
        subprocess.run(command, capture_output=True, text=True, check=True)

    def _write_launcher(self) -> None:
        """The ssh stand-in Hydra (-launcher-exec) and Open MPI (plm_rsh_agent) call as
        `ssh [options] HOST COMMAND...`: it drops the options and runs COMMAND on HOST."""
        cases = "\n".join(f"  {host}) ns={self.namespace(host)} ;;" for host in self.names)
        self.launcher.write_text(
            f"""#!/bin/sh
# ssh stand-in for emulated hosts ({self.name}): ssh [-x|-q|-T|-o OPT|-p PORT|-l USER] HOST COMMAND...
while [ $# -gt 0 ]; do
  case "$1" in
    -x|-q|-T|-n|-a) shift ;;
    -o|-p|-l) shift 2 ;;
    *) break ;;
  esac
done
host=${{1#*@}}; shift
case "$host" in
{cases}
  *) echo "ssh stand-in: no emulated host $host" >&2; exit 255 ;;
esac
exec ip netns exec "$ns" unshare --uts sh -c "hostname $host && exec sh -c \\"\\$0\\"" "$*"
"""
        )
        self.launcher.chmod(0o755)

    def down(self, quiet: bool = False) -> None:
        """Kill what runs on the hosts, delete namespaces, veths and bridge. Idempotent."""
        for host in self.names:
            self._kill_processes(self.namespace(host))
        for index, host in enumerate(self.names, start=1):
            _ip("link", "del", f"{self.name}v{index}", check=False)  # its peer goes with it, at once
            _ip("netns", "del", self.namespace(host), check=False)
        _ip("link", "del", self.bridge, check=False)
        if not quiet:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @staticmethod
    def _kill_processes(ns: str) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            listed = _ip("netns", "pids", ns, check=False)
            pids = [int(p) for p in listed.stdout.split()] if listed.returncode == 0 else []
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if not pids:
                return
            time.sleep(0.5)
