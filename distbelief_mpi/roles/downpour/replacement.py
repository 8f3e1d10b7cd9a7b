"""A replacement replica: the process the lead and the shards spawn for a replica that left
(faults.replica_loss = replace; replacer.py starts it, shard_rescue.py serves it).

It is replica r again: the same data part, fast-forwarded to the step the shards had applied
of the lost process's pushes (what was computed and not pushed is computed again), trained to
the same run limit, reporting its figures to the lead under r's id.

Why it talks to the shards with messages (comm/message_endpoint.py), not through windows:
windows over a communicator it belongs to would have to cover the shards' existing memory, and
with MPICH atomics through two windows over the same memory are not atomic with each other
(bench/survival/two_windows.py: lost updates in 6 of 10 runs), while our landing-slot protocol
rests on atomics every replica shares. Moving every rank to new windows instead would pause
every replica for each replacement and touch every rank's state; one replica's traffic over
messages costs the shards a copy per push and per fetch and stops nobody.

Run as `python -m distbelief_mpi.roles.downpour.replacement RUN_DIR replica=R` by MPI_Comm_spawn
only (the arguments name it in `ps`; what it runs comes from the lead, ReplacementSetup).
"""

import dataclasses
import logging
import os
import socket
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import numpy as np

from ...comm.message_endpoint import MessageEndpoint
from ...comm.messages import REPORT, TEARDOWN, FinalReport, Messenger
from ...comm.rescue import join_as_replacement
from ...comm.world import abort_job
from ...config import JobSpec
from ...data.batches import open_replica_stream
from ...errors import DistbeliefError
from ...job import Job
from ...kernels.thread_pool import set_compute_threads
from ...model.warm_up import warm_up_kernels
from ...runtime import preempt
from ...runtime.logs import setup_logging
from ...runtime.processes import rank_label
from ...runtime.thread_budget import threads_for_rank
from ...runtime.watchdog import Watchdog
from ..loop import Reporting, run_loop
from ..partitioned_replica import ShardSubset, own_shards
from .hooks import DownpourHooks, finish_replica
from .replacer import ReplacementSetup
from .replica import ReplicaRun, replica_figures

log = logging.getLogger(__name__)


def replacement_spec(spec: JobSpec) -> JobSpec:
    """The job's spec as the replacement runs it: transfers inline and in the main thread (its
    messenger is one communicator, not shared between threads), and no injected fault (the
    replica that left may have been told to leave: its replacement must not)."""
    optimizer = dataclasses.replace(spec.optimizer, transfers="inline", overlap_comm=False)
    faults = dataclasses.replace(spec.faults, inject="none")
    return dataclasses.replace(spec, optimizer=optimizer, faults=faults)


def replacement_job(setup: ReplacementSetup) -> Job:
    from ...train import load_and_plan

    spec, info, network, layout, _ = load_and_plan(replacement_spec(setup.spec), [], setup.world_size, 0)
    role = layout.role_of(layout.rank_of(setup.replica_id, 0))
    return Job(spec, info, network, layout, role, Path(setup.run_dir), progress=False)


def train_replacement(job: Job, messenger: Messenger, setup: ReplacementSetup, watchdog: Watchdog) -> dict:
    """Replica r's training from setup.first_step; returns its figures (as train_replica's)."""
    spec, info, replica_id = job.spec, job.info, setup.replica_id
    params = np.empty(job.network.n_params, np.float32)
    shard_ids, local_ranges = own_shards(job)
    inner = MessageEndpoint(messenger, setup.shard_ranks, replica_id, hung_after=spec.faults.watchdog_seconds)
    opt, n_replicas = spec.optimizer, spec.topology.replicas
    chunk = spec.data.chunk_examples
    with open_replica_stream(
        info.path, info.n_train, replica_id, n_replicas, opt.batch_size, spec.run.seed, chunk
    ) as stream:
        stream.fast_forward(setup.first_step * opt.batch_size)
        endpoint, lead = ShardSubset(inner, shard_ids), [setup.lead]  # a preemption it sees goes to the lead
        hooks = DownpourHooks(spec, endpoint, local_ranges, params, messenger, lead, stream=stream)
        run = ReplicaRun(job, job.network, params, stream, hooks, setup.first_step, None, None)
        warm_up_kernels(job.network.layers)
        with watchdog:
            started = time.perf_counter()
            result = run_loop(spec, job.network, params, stream, hooks, Reporting(), setup.first_step)
            finish_replica(messenger, hooks, list(setup.shard_ranks))
    return {**replica_figures(run, result, time.perf_counter() - started), "replacement_from_step": setup.first_step}


def main() -> None:
    """Join, train, report, wait for the lead's word, leave (with _exit: the job's world has a
    rank that left, and MPI_Finalize would wait for it; docs/reliability.md). Any failure ends
    the whole job loudly: the shards would otherwise wait for this replica's "done"."""
    preempt.install()
    preempt.survive_process_failures()
    comm, setup = join_as_replacement()
    label = f"replacement of replica {setup.replica_id}"
    code = 0
    try:
        _replace(comm, setup)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        detail = str(exc) if isinstance(exc, DistbeliefError) else traceback.format_exc()
        print(f"error on {label} ({socket.gethostname()}): {detail}", file=sys.stderr)
        code = exc.exit_code if isinstance(exc, DistbeliefError) else 1
        abort_job(comm, code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _replace(comm, setup: ReplacementSetup) -> None:
    job = replacement_job(setup)
    world_rank, label = job.role.world_rank, f"replacement of {job.role.label}"
    (job.run_dir / "logs").mkdir(parents=True, exist_ok=True)
    setup_logging(world_rank, label, job.run_dir / "logs")  # appended to the lost rank's log
    set_compute_threads(threads_for_rank(job.spec.topology.threads_per_rank))
    messenger = Messenger(comm)
    watchdog = Watchdog(job.spec.faults.watchdog_seconds, rank_label(world_rank, label), partial(abort_job, comm))
    log.warning("replacing replica %d from step %d on %s", setup.replica_id, setup.first_step, socket.gethostname())
    report = train_replacement(job, messenger, setup, watchdog)
    messenger.send(REPORT, FinalReport(report), setup.lead)
    messenger.wait(TEARDOWN, setup.lead)


if __name__ == "__main__":
    main()
