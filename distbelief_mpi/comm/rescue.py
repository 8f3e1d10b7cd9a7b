"""Spawning a replacement replica: the lead and the shards start one process that joins them.

MPI_Comm_spawn is collective over the communicator it is called on, and the world still counts
the rank that left. So the lead and the shards first make a communicator of their own
(MPI_Comm_create_group: only its members take part, and the other replicas keep training),
spawn one process from it (root: the lead), and merge the intercommunicator. In the merged
communicator the members keep their order (ascending world rank) and the new process is last.
Every step was measured to survive a replica's exit with MPICH (bench/survival/spawn.py,
docs/reliability.md); a second replica leaving during the spawn ends an MPICH job.
"""

import sys
import threading
from dataclasses import dataclass
from typing import Any

from ..runtime import watchdog

REPLACEMENT_MODULE = "distbelief_mpi.roles.downpour.replacement"
CREATE_GROUP_TAG = 7000  # + the replica id: concurrent replacements never mix their calls
SETUP_TAG = 7999  # the lead -> the new process: what to train (ReplacementSetup)


@dataclass(frozen=True)
class RescueLink:
    """The merged communicator of the lead, the shards and one replacement."""

    comm: Any  # MPI.Intracomm: members in ascending world rank, then the replacement
    members: tuple[int, ...]  # world ranks of the lead and the shards, in comm's order

    @property
    def replacement(self) -> int:
        """The replacement's rank in comm."""
        return len(self.members)

    def rank_of(self, world_rank: int) -> int:
        return self.members.index(world_rank)


def spawn_replacement(world_comm, members, lead: int, replica_id: int, steps_applied: int, make_setup=None, label=()):
    """Collective over `members` (world ranks: the lead and every shard), blocking until all of
    them call it. Each shard passes the lost replica's minibatch steps it has applied, the lead
    any larger number, make_setup(fewest steps any shard applied), whose result the new process
    receives first, and `label`: arguments that only name the process in `ps` (the run
    directory). Returns (RescueLink, the fewest steps)."""
    from mpi4py import MPI

    ordered = tuple(sorted(members))

    def spawn():
        group = world_comm.Get_group().Incl(list(ordered))
        own = world_comm.Create_group(group, CREATE_GROUP_TAG + replica_id)
        group.Free()
        # The fewest: a push that reached one shard and was deferred at another went down with
        # the process, and the replacement must train every step some shard is missing.
        fewest = own.allreduce(steps_applied, op=MPI.MIN)
        command = ["-m", REPLACEMENT_MODULE, *label]
        intercomm = own.Spawn(sys.executable, command, maxprocs=1, root=ordered.index(lead))
        return intercomm.Merge(high=False), fewest

    merged, fewest = beating_while(spawn)
    link = RescueLink(merged, ordered)
    if make_setup is not None:
        merged.send(make_setup(fewest), dest=link.replacement, tag=SETUP_TAG)
    return link, fewest


def beating_while(work):
    """work()'s result, run on a helper thread while this one beats the watchdog: the spawn is
    a collective that legitimately takes seconds (2.7 s measured on a loaded machine), and a
    short faults.watchdog_seconds must not take it for a hang. Its errors are raised here."""
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="spawn", daemon=True)
    thread.start()
    while thread.is_alive():
        watchdog.beat()
        thread.join(timeout=0.25)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def join_as_replacement():
    """In the spawned process: (merged communicator, the setup the lead sent)."""
    from mpi4py import MPI

    parent = MPI.Comm.Get_parent()
    if parent == MPI.COMM_NULL:
        raise RuntimeError(f"{REPLACEMENT_MODULE} is started by a running job (MPI_Comm_spawn), not by hand")
    merged = parent.Merge(high=True)
    return merged, merged.recv(source=MPI.ANY_SOURCE, tag=SETUP_TAG)
