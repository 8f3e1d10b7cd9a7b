"""The lead's side of faults.replica_loss = replace: spawn a process for each replica that left.

A shard that finds a replica's process gone says so (ReplicaLost). The lead, polling after
each of its steps and while it collects the final reports, answers the first word about each
replica: it asks every shard to join it (ReplaceReplica), spawns the replacement with them
(comm/rescue.py) and sends it what to train: the lost replica's data part from the fewest of
its steps any shard had applied. The replacement then
reports to the lead over their communicator, and is told when all is done, as any rank is.
"""

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ...comm.messages import (
    LOST,
    PREEMPT,
    REPLACE,
    REPORT,
    TEARDOWN,
    Messenger,
    PreemptNotice,
    ReplaceReplica,
    Teardown,
)
from ...comm.rescue import spawn_replacement
from ...config import JobSpec
from ...runtime import preempt

log = logging.getLogger(__name__)
NO_STEPS = 2**62  # the lead's part in the shards' minimum: it applies no pushes


@dataclass(frozen=True)
class ReplacementSetup:
    """The lead -> a replacement: who it is and where its work starts."""

    spec: JobSpec  # resolved (replicas a number)
    run_dir: str
    world_size: int  # of the job it joins: its layout is the job's
    replica_id: int
    first_step: int  # its data part continues from here (the steps the shards applied, after a resume's)
    shard_ranks: tuple[int, ...]  # shard s's rank in the merged communicator
    lead: int  # the lead's rank there


@dataclass
class ReplacedReplica:
    """summary.json's record of one replacement."""

    replica_id: int
    world_rank: int  # the rank that left
    from_step: int
    noticed_by_shard: int
    spawn_s: float  # the lead's time in the spawn collective


class Replacer:
    """The lead's replacements: one link (a Messenger on the merged communicator, the
    replacement last in it) per replica replaced, their reports, and summary.json's records."""

    def __init__(self, job, messenger: Messenger):
        self.job, self.messenger = job, messenger
        self.shards = list(job.layout.ranks_of("shard"))
        self.members = sorted([*self.shards, job.layout.lead_rank])
        self.links: dict[int, Messenger] = {}  # replica id -> messenger to its replacement
        self.replaced: list[ReplacedReplica] = []
        self.reports: dict[int, dict] = {}  # replica id -> its replacement's FinalReport
        self.preemption_forwarded = False
        self.resumed_at = job.resume.step if job.resume else 0  # a replacement's steps count from here

    @property
    def pending(self) -> bool:
        """A replacement has not reported yet."""
        return len(self.reports) < len(self.links)

    def poll(self) -> None:
        """Answer news of lost replicas; pass a preemption on, both ways (a replacement that got
        the signal tells us; the lead's own hooks then tell the other replicas)."""
        for lost, source in self.messenger.receive_all(LOST):
            if lost.replica_id not in self.links:
                self._replace(lost.replica_id, self.job.layout.role_of(source).shard_id)
        if any(link.receive_all(PREEMPT) for link in self.links.values()):
            preempt.request()
        if preempt.requested() and not self.preemption_forwarded and self.links:
            for link in self.links.values():
                link.send(PREEMPT, PreemptNotice(), link.size - 1)
            self.preemption_forwarded = True

    def collect(self) -> None:
        """Take the replacements' final reports that have arrived."""
        for replica_id, link in self.links.items():
            if replica_id not in self.reports and link.waiting(REPORT, link.size - 1):
                self.reports[replica_id] = link.receive(REPORT, link.size - 1).stats

    def teardown(self, lost_ranks: tuple[int, ...]) -> None:
        for link in self.links.values():
            link.send(TEARDOWN, Teardown(lost_ranks), link.size - 1)

    def summary(self) -> list[dict]:
        return [asdict(record) for record in self.replaced]

    def _replace(self, replica_id: int, shard_id: int) -> None:
        job = self.job
        log.warning("replica %d has left; spawning a replacement", replica_id)
        self.messenger.send_to_all(REPLACE, ReplaceReplica(replica_id), self.shards)
        started = time.perf_counter()
        link, fewest = spawn_replacement(
            self.messenger.comm,
            self.members,
            job.layout.lead_rank,
            replica_id,
            NO_STEPS,
            self._setup(replica_id),
            label=(str(job.run_dir.resolve()), f"replica={replica_id}"),
        )
        spawn_s = time.perf_counter() - started
        first_step = self.resumed_at + fewest
        self.links[replica_id] = Messenger(link.comm)
        world_rank = job.layout.rank_of(replica_id, 0)
        self.replaced.append(ReplacedReplica(replica_id, world_rank, first_step, shard_id, round(spawn_s, 3)))
        log.warning(
            "replica %d's replacement joined after %.2f s; it trains from step %d", replica_id, spawn_s, first_step
        )

    def _setup(self, replica_id: int):
        """make_setup for spawn_replacement: the setup, given the fewest steps a shard applied."""
        job = self.job

        def make(fewest: int) -> ReplacementSetup:
            return ReplacementSetup(
                _absolute_data_path(job.spec),
                str(job.run_dir.resolve()),
                job.layout.world_size,
                replica_id,
                self.resumed_at + fewest,
                tuple(self.members.index(rank) for rank in self.shards),
                self.members.index(job.layout.lead_rank),
            )

        return make


def _absolute_data_path(spec: JobSpec) -> JobSpec:
    """The spawned process may start in another directory than the job did."""
    data = dataclasses.replace(spec.data, path=str(Path(spec.data.path).resolve()))
    return dataclasses.replace(spec, data=data)
