"""Which ranks are alive, and which replicas have gone silent: what a shard decides on.

MPI (the MPICH wheel, Open MPI without ULFM) cannot tell a survivor that a peer has
exited, and the fault-tolerance extensions are not usable from mpi4py. The operating system
can: every rank learns every other rank's (host, pid) and liveness port at start-up. A rank of
this host is checked with kill(pid, 0) and /proc (a zombie counts as gone); a rank of another
host through its liveness port (runtime/liveness_port.py): refused where its own token once
came back means its process has exited; accepted means it still runs (hung, if silent); no
answer (its host down, or never verified) means this rank cannot tell, and a silent rank it
cannot tell about is treated as hung.
"""

import os
import socket
import time
from dataclasses import dataclass

from ..comm.control import Backoff
from ..comm.messages import REPORT, Channel, Messenger
from ..comm.world import gather_to_all
from ..errors import RankHung, RankLost
from ..runtime.liveness_port import Contact, Prober, own_contact
from ..runtime.processes import process_alive, process_space

# A silent replica's process is looked at after this long without a push (a cheap check)...
CHECK_AFTER_S = 1.0


@dataclass(frozen=True)
class Peer:
    space: str  # process_space(): where its pid means the same process
    hostname: str
    pid: int
    contact: Contact  # its liveness port


class Peers:
    """Every world rank's Peer, and verdicts on them from this rank (`here`: its process space)."""

    def __init__(self, peers, here: str | None = None):
        self.peers: tuple[Peer, ...] = tuple(peers)
        self.here = process_space() if here is None else here
        self.prober = Prober({rank: p.contact for rank, p in enumerate(self.peers) if p.space != self.here})
        self.multihost = len({p.hostname for p in self.peers}) > 1

    @classmethod
    def gather(cls, world_comm) -> "Peers":
        """Collective, at start-up (every rank is alive then). Opens this rank's liveness port."""
        mine = Peer(process_space(), socket.gethostname(), os.getpid(), own_contact())
        return cls(gather_to_all(world_comm, mine))

    def gone(self, rank: int) -> bool | None:
        """True: the rank's process has exited; False: it is running (maybe stopped or hung);
        None: it runs on another host and this rank cannot tell (the host does not answer, or
        its address was never verified: see watch). Never blocks for long (liveness_port.py)."""
        peer = self.peers[rank]
        if peer.space == self.here:
            return not process_alive(peer.pid)
        return self.prober.verdict(rank)

    def watch(self, ranks) -> None:
        """Ranks this rank will ask about: those on other hosts are probed now, in the background,
        while alive, so that a later refusal at their verified address can prove them gone."""
        self.prober.watch(ranks)

    def name(self, rank: int) -> str:
        """'rank 3', or 'rank 3 on h2' when the job spans hosts."""
        return f"rank {rank} on {self.peers[rank].hostname}" if self.multihost else f"rank {rank}"


def rank_name(peers: "Peers | None", rank: int) -> str:
    return peers.name(rank) if peers is not None else f"rank {rank}"


def unchecked_reason(gone: bool | None) -> str:
    """Why a silent rank that has not been found gone is taken for hung."""
    return "its process has not exited" if gone is False else "its process cannot be checked from here"


class ReplicaWatch:
    """A shard's view of each replica's activity: the last time a replica posted a push or
    had one applied. `verdicts()` names the replicas that have left (process gone) and the
    ones that are hung (alive, or unknowable, and silent for `timeout` seconds). A replica
    is only called hung after its first push: before it, it may be waiting out a warmstart.
    who() and state() word messages about a replica."""

    def __init__(self, peers: Peers, replica_ranks: list[int], timeout: float):
        self.peers, self.replica_ranks, self.timeout = peers, list(replica_ranks), timeout
        now = time.monotonic()
        self.last_seen = {replica_id: now for replica_id in range(len(replica_ranks))}
        self.pushed: set[int] = set()
        self.next_check = now + CHECK_AFTER_S
        self.last_verdict: dict[int, bool | None] = {}  # replica id -> its last gone() verdict
        peers.watch(self.replica_ranks)

    def who(self, replica_id: int) -> str:
        """'replica 1 (rank 3)', or 'replica 1 (rank 3 on h2)' when the job spans hosts."""
        return f"replica {replica_id} ({self.peers.name(self.replica_ranks[replica_id])})"

    def state(self, replica_id: int) -> str:
        """What is known of a silent replica not found gone ('its process has not exited')."""
        return unchecked_reason(self.last_verdict.get(replica_id))

    def saw(self, replica_id: int) -> None:
        self.last_seen[replica_id] = time.monotonic()
        self.pushed.add(replica_id)

    def verdicts(self, finished: set[int]) -> tuple[list[int], list[tuple[int, float]]]:
        """(left, hung) among replicas not in `finished` (done or already lost): left is
        [replica id], hung is [(replica id, silent seconds)]. Cheap between checks."""
        now = time.monotonic()
        if now < self.next_check:
            return [], []
        self.next_check = now + CHECK_AFTER_S
        left, hung = [], []
        for replica_id, seen in self.last_seen.items():
            silent = now - seen
            if replica_id in finished or silent < CHECK_AFTER_S:
                continue
            gone = self.last_verdict[replica_id] = self.peers.gone(self.replica_ranks[replica_id])
            if gone:
                left.append(replica_id)
            elif self.timeout and silent > self.timeout and replica_id in self.pushed:
                hung.append((replica_id, silent))
        return left, hung


def collect_reports(
    messenger: Messenger, own: dict, shard_ranks, replica_ranks, peers: Peers, replacer=None
) -> tuple[list[dict], list[int]]:
    """The lead, at the end: every other rank's statistics (FinalReport). Returns (reports,
    world ranks that left). Shards report only once every replica is done, has left or has
    been replaced, so the replicas they list as lost are final; a replica whose process is gone
    without a report is lost too. A shard that has left ends the job: it held parameters.
    replacer (roles/downpour/replacer.Replacer): losses are still answered while we wait, and
    the replacements' reports join the others."""
    me = messenger.rank
    reports, waiting, lost, backoff = {me: own}, (set(shard_ranks) | set(replica_ranks)) - {me}, set(), Backoff()
    peers.watch(sorted(waiting))
    while waiting or (replacer is not None and replacer.pending):
        if replacer is not None:
            replacer.poll()
            replacer.collect()
        for record, source in messenger.receive_all(REPORT):
            report = reports[source] = record.stats
            waiting.discard(source)
            lost |= {replica_ranks[r] for r in report.get("lost_replicas", [])}
        for rank in sorted(waiting & lost):
            waiting.discard(rank)
        for rank in sorted(waiting):
            if peers.gone(rank):
                if rank in shard_ranks:
                    raise RankLost(
                        f"shard {peers.name(rank)} has left the job: the parameters it held are lost "
                        "(resume from the last checkpoint)"
                    )
                lost.add(rank)
                waiting.discard(rank)
        if waiting or (replacer is not None and replacer.pending):
            backoff.sleep()
    replacements = list(replacer.reports.values()) if replacer is not None else []
    return [reports[rank] for rank in sorted(reports) if rank not in lost] + replacements, sorted(lost)


class Silence:
    """How long `rank` has said nothing to this rank; check() (cheap, rate-limited) raises
    RankLost once its process has exited, RankHung after hung_after seconds (0: never)."""

    def __init__(
        self, peers: Peers | None, rank: int, who: str, hung_after: float, limit_from: str = "faults.watchdog_seconds"
    ):
        self.peers, self.rank, self.who, self.hung_after = peers, rank, who, hung_after
        self.limit_from = limit_from
        if peers is not None:
            peers.watch([rank])
        self.heard = time.monotonic()
        self.next_check = self.heard + CHECK_AFTER_S

    def heard_now(self) -> None:
        self.heard = time.monotonic()

    def check(self) -> None:
        now = time.monotonic()
        if now > self.next_check:
            self.next_check = now + CHECK_AFTER_S
            judge(self.peers, self.rank, self.who, now - self.heard, self.hung_after, self.limit_from)


def recv_watched(
    messenger: Messenger,
    channel: Channel,
    source: int,
    peers: Peers | None,
    who: str,
    hung_after: float = 0.0,
    limit: float = 5e-3,
    silence: Silence | None = None,
    on_wait=None,
):
    """Receive the next record on `channel` from `source`, sleeping; RankLost if its process
    exits meanwhile, RankHung if nothing comes within hung_after seconds (0: wait as long as it
    lives). `who` names it. silence: a watch kept across receives (then silent since its last
    message, not this call); on_wait(): called on every pass of the wait (the coordinator keeps
    others informed)."""
    watch = silence or Silence(peers, source, who, hung_after)

    def check() -> None:
        watch.check()
        if on_wait is not None:
            on_wait()

    record = messenger.wait(channel, source, on_wait=check, limit=limit)
    watch.heard_now()
    return record


def judge(
    peers: Peers | None,
    rank: int,
    who: str,
    waited: float,
    hung_after: float,
    limit_from: str = "faults.watchdog_seconds",
) -> None:
    """RankLost when `rank`'s process has exited; RankHung when it has been awaited too long."""
    gone = peers.gone(rank) if peers is not None else None
    if gone:
        raise RankLost(f"{who} ({rank_name(peers, rank)}) has left the job (its process exited)")
    if hung_after and waited > hung_after:
        raise RankHung(
            f"{who} ({rank_name(peers, rank)}) has not answered for {waited:.0f} s: it is hung "
            f"(the limit is {hung_after:g} s: {limit_from})"
        )
