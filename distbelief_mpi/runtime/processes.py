"""Operating-system probes: is a process alive, and where does a pid mean the same process.

MPI cannot tell a survivor that a peer has exited (docs/reliability.md); on one host the
operating system can. A process on another host is asked through its liveness port
(liveness_port.py). roles/liveness.py decides what a silent rank means from these.
"""

import os
import socket


def rank_label(world_rank: int, role: str) -> str:
    """How messages name a rank: 'rank 3 on node17 (replica 1/partition 0)'; across hosts the
    host says where to look for its log and its stacks."""
    return f"rank {world_rank} on {socket.gethostname()} ({role})"


def process_space() -> str:
    """Where a pid means the same process: the host, its boot and the pid namespace (containers
    sharing a host name, or nodes all called "localhost", must not compare pids)."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            parts.append(boot.read().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass
    return "/".join(parts)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): kill(pid, 0) is all we know
    return state not in ("Z", "X")  # a zombie has exited; its parent has not reaped it yet
