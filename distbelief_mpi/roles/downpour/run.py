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

import numpy as np

from ...comm.messages import REPORT, TEARDOWN, FinalReport, Messenger, Teardown
from ...comm.param_server import ParamServerWindows
from ...comm.world import abort_job
from ...data.hdf5 import read_split
from ...job import Job, RoleResult
from ...runtime.limits import RunClock
from ...runtime.peak_memory import peak_rss_bytes, with_own_peak
from ...runtime.rundir import MetricsLog
from ...runtime.watchdog import Watchdog
from ..liveness import Peers, collect_reports, recv_watched
from ..loop import log_eval
from ..partitioned_replica import replica_comm
from .replica import fetch_final, train_replica
from .shard import serve_shard
from .summary import downpour_summary

log = logging.getLogger(__name__)


def run_downpour(job: Job, world_comm, world_rank: int) -> RoleResult:
    """On the lead replica the result holds the summary and final parameters; on every rank
    it names the world ranks that left mid-run (faults.replica_loss = continue)."""
    layout, role = job.layout, job.role
    peers, messenger = Peers.gather(world_comm), Messenger(world_comm)
    partners_comm = replica_comm(world_comm, role, job.spec.topology.partitions_per_replica)
    windows = ParamServerWindows(
        world_comm,
        layout.ranks_of("shard"),
        layout.shard_ranges,
        job.spec.topology.replicas,
        role.shard_id if role.role == "shard" else -1,
    )
    # No try/finally around this: closing the windows is collective, so after an error on
    # one rank it would wait forever; the error aborts the whole job instead (train.py).
    is_lead = world_rank == layout.lead_rank
    # The lead evaluates during training and at the end: one read of the test split serves both.
    test_set = read_split(job.info.path, "test") if is_lead else None
    watchdog = Watchdog(
        job.spec.faults.watchdog_seconds, f"rank {world_rank} ({role.label})", partial(abort_job, world_comm)
    )
    if role.role == "shard":
        own_report = serve_shard(job, windows, messenger, peers, watchdog)
    else:
        own_report = train_replica(job, windows, messenger, partners_comm, test_set, watchdog)
    own_report = {**own_report, "peak_rss_bytes": peak_rss_bytes()}  # its work is done: the peak is known
    with watchdog:
        if not is_lead:
            lost_ranks = _await_teardown(job, messenger, peers, own_report)
            return _close(windows, RoleResult(lost_ranks=lost_ranks))
        reports, lost = collect_reports(
            messenger, own_report, layout.ranks_of("shard"), layout.ranks_of("replica"), peers
        )
        final = fetch_final(job, windows)  # every push is applied; shards are idle
        lost_ranks = tuple(lost)
        everyone_else = sorted(set(range(layout.world_size)) - set(lost_ranks) - {world_rank})
        messenger.send_to_all(TEARDOWN, Teardown(lost_ranks), everyone_else)
    _close(windows, RoleResult(lost_ranks=lost_ranks))
    return RoleResult(_report(job, reports, final, test_set), final, lost_ranks)


def _await_teardown(job: Job, messenger: Messenger, peers: Peers, own_report: dict) -> tuple[int, ...]:
    """Every rank but the lead: report, then wait until the lead says all is done (and who left)."""
    lead = job.layout.lead_rank
    messenger.send(REPORT, FinalReport(own_report), lead)
    return recv_watched(messenger, TEARDOWN, lead, peers, "the lead replica").lost_ranks


def _close(windows: ParamServerWindows, result: RoleResult) -> RoleResult:
    if not result.lost_ranks:
        windows.close()  # collective: only when every rank is still there (train.py ends the others)
    return result


def _report(job: Job, reports: list[dict], final: np.ndarray, test_set) -> dict:
    x_test, y_test = test_set
    with MetricsLog(job.run_dir) as metrics:
        replica0 = next(r for r in reports if r["role"] == "replica" and r["replica_id"] == 0)
        clock = RunClock(steps=replica0["steps"], epochs=replica0["epochs"], seconds=replica0["loop_s"])
        test_loss, test_accuracy = log_eval(metrics, job.network, final, x_test, y_test, clock)
    summary = downpour_summary(job, reports, test_loss, test_accuracy)
    return {**summary, "peak_rss_bytes": with_own_peak(summary["peak_rss_bytes"], "replica")}
