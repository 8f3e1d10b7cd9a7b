"""Downpour SGD on every rank: shards serve, replicas train, the lead replica reports.

Sequence (every rank): open the windows; shards publish the initial parameters; a
sleeping barrier; replicas train (replica 0 alone first during a warmstart) while shards
apply pushes; replicas push what is left and say ReplicaDone; shards drain and stop; every
rank sends its statistics to the lead replica (replica 0), which fetches the final
parameters from the shards, tells every rank still there that all is done (and who left),
evaluates the parameters and writes the summary.

Every wait after the start is point-to-point, never a collective over all ranks: with
faults.replica_loss = continue a replica may have left, and a collective would wait for
it forever. A watchdog (runtime/watchdog.py) runs on every rank while it trains or serves.
"""

import logging
from functools import partial

from ...comm.control import barrier_sleeping
from ...comm.messages import REPORT, TEARDOWN, FinalReport, Messenger, Teardown
from ...comm.param_server import ParamServerWindows
from ...comm.world import abort_job
from ...data.hdf5 import read_split
from ...job import Job, RoleResult
from ...runtime.limits import RunClock
from ...runtime.peak_memory import peak_rss_bytes, resident_now, with_own_peak
from ...runtime.processes import rank_label
from ...runtime.rundir import MetricsLog
from ...runtime.watchdog import Watchdog
from ..liveness import Peers, collect_reports, recv_watched
from ..loop import record_eval
from ..partitioned_replica import replica_comm
from .final import final_evaluation, write_final_params
from .replacer import Replacer
from .replica import train_replica
from .shard import serve_shard
from .summary import downpour_summary

log = logging.getLogger(__name__)


def run_downpour(job: Job, world_comm, world_rank: int) -> RoleResult:
    """On the lead replica the result holds the summary (params.h5 is written here, streamed
    from the shards); on every rank it names the world ranks that left mid-run
    (faults.replica_loss = continue)."""
    layout, role = job.layout, job.role
    peers, messenger = Peers.gather(world_comm), Messenger(world_comm)
    partners_comm = replica_comm(world_comm, role, job.spec.topology.partitions_per_replica)
    windows = ParamServerWindows(
        world_comm,
        layout.ranks_of("shard"),
        layout.shard_ranges,
        job.spec.topology.replicas,
        role.shard_id if role.role == "shard" else -1,
        landing_slots=job.spec.optimizer.landing_slots,
    )
    # No try/finally around this: closing the windows is collective, so after an error on
    # one rank it would wait forever; the error aborts the whole job instead (train.py).
    is_lead = world_rank == layout.lead_rank
    # Replica 0 evaluates during training and at the end (all its partitions together): one
    # read of the test split serves both.
    test_set = read_split(job.info.path, "test") if role.role == "replica" and role.replica_id == 0 else None
    watchdog = Watchdog(
        job.spec.faults.watchdog_seconds, rank_label(world_rank, role.label), partial(abort_job, world_comm)
    )
    replacer = Replacer(job, messenger) if is_lead and job.spec.faults.replica_loss == "replace" else None
    if role.role == "shard":
        own_report = serve_shard(job, windows, messenger, peers, watchdog)
    else:
        own_report = train_replica(job, windows, messenger, partners_comm, test_set, watchdog, replacer)
    own_report = {**own_report, "peak_rss_bytes": peak_rss_bytes()}  # its work is done: the peak is known
    log.info("role done: peak RSS %d bytes (now %s)", own_report["peak_rss_bytes"], resident_now())
    if not is_lead:
        with watchdog:
            lost_ranks = _await_teardown(job, messenger, peers, own_report)
            if test_set is not None:  # a partition of replica 0: the final evaluation, with the lead
                final_evaluation(job, windows, partners_comm, test_set)
        return _close(messenger, windows, RoleResult(lost_ranks=lost_ranks))
    with watchdog:
        reports, lost = collect_reports(
            messenger, own_report, layout.ranks_of("shard"), layout.ranks_of("replica"), peers, replacer
        )
        lost_ranks, partners = tuple(lost), _lead_partners(job)
        messenger.send_to_all(TEARDOWN, Teardown(lost_ranks), partners)  # they evaluate with us now
        test_loss, test_accuracy = final_evaluation(job, windows, partners_comm, test_set)
        steps = _replica0(reports)["steps"]
        write_final_params(job, windows, steps)  # every push is applied; shards are idle
        everyone_else = sorted(set(range(layout.world_size)) - set(lost_ranks) - set(partners) - {world_rank})
        messenger.send_to_all(TEARDOWN, Teardown(lost_ranks), everyone_else)
        if replacer is not None:
            replacer.teardown(lost_ranks)
    _close(messenger, windows, RoleResult(lost_ranks=lost_ranks))
    summary = _report(job, reports, test_loss, test_accuracy)
    if replacer is not None:
        summary["replicas_replaced"] = replacer.summary()
    return RoleResult(summary, None, lost_ranks)


def _lead_partners(job: Job) -> list[int]:
    """World ranks of replica 0's other partitions."""
    return [job.layout.rank_of(0, p) for p in range(1, job.spec.topology.partitions_per_replica)]


def _replica0(reports: list[dict]) -> dict:
    return next(r for r in reports if r["role"] == "replica" and r["replica_id"] == 0 and r["partition_id"] == 0)


def _await_teardown(job: Job, messenger: Messenger, peers: Peers, own_report: dict) -> tuple[int, ...]:
    """Every rank but the lead: report, then wait until the lead says all is done (and who left)."""
    lead = job.layout.lead_rank
    messenger.send(REPORT, FinalReport(own_report), lead)
    return recv_watched(messenger, TEARDOWN, lead, peers, "the lead replica").lost_ranks


def _close(messenger: Messenger, windows: ParamServerWindows, result: RoleResult) -> RoleResult:
    """Free the windows: collective, so only when every rank is still there (train.py ends the
    others). A sleeping barrier first: replica 0's partitions get here while the lead still
    writes params.h5, and MPI's own wait in Win_free would spin a core all that time."""
    if not result.lost_ranks:
        barrier_sleeping(messenger.comm)
        windows.close()
    return result


def _report(job: Job, reports: list[dict], test_loss: float, test_accuracy: float) -> dict:
    replica0 = _replica0(reports)
    clock = RunClock(steps=replica0["steps"], epochs=replica0["epochs"], seconds=replica0["loop_s"])
    with MetricsLog(job.run_dir) as metrics:
        record_eval(metrics, test_loss, test_accuracy, job.info.n_test, clock)
    summary = downpour_summary(job, reports, test_loss, test_accuracy)
    return {**summary, "peak_rss_bytes": with_own_peak(summary["peak_rss_bytes"], "replica")}
