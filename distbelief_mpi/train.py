"""`distbelief train`: set up every rank, agree that all are fine, run the rank's role.

Set-up problems (bad spec, dataset, world size, run directory) are found on every rank
before any work starts; the ranks agree collectively, so all stop together with exit
code 2 instead of some waiting on others. After that, an unexpected exception on any
rank aborts the whole job, naming the rank and role.
"""

import logging
import os
import sys
import traceback
from pathlib import Path

from .checkpoint.init_from import source_params
from .checkpoint.params_file import save_params
from .checkpoint.resume import auto_resume_point, find_resume_point
from .comm.world import (
    abort_job,
    agree_on_errors,
    any_rank,
    broadcast,
    broadcast_sleeping,
    gather_to_root,
    init_world,
)
from .config import JobSpec, checked_spec, load_job, spec_items
from .data.hdf5 import read_info
from .errors import DistbeliefError, UserInputError
from .job import Job, RoleResult
from .layout import plan_layout, resolve_topology
from .memory import format_bytes
from .model.network import build_network
from .model.partition import partition_offsets
from .runtime import preempt
from .runtime.logs import setup_logging
from .runtime.peak_memory import peak_rss_bytes, resident_now
from .runtime.processes import rank_label
from .runtime.progress import wanted as progress_wanted
from .runtime.rundir import default_run_dir, prepare_run_dir, write_summary
from .runtime.spec_agreement import mismatch_message, spec_digest
from .runtime.thread_budget import threads_for_rank

log = logging.getLogger(__name__)


def load_and_plan(job: "str | JobSpec", overrides: list[str], world_size: int, world_rank: int):
    """Everything that can be checked before work starts. Pure of MPI. job: a spec file (with
    --set overrides) or a JobSpec built in Python (checked as a file would be)."""
    spec = load_job(job, overrides) if isinstance(job, str) else checked_spec(job)
    info = read_info(spec.data.path)
    network = build_network(spec.model.layers, info.input_shape, info.n_classes, source=spec.source)
    spec = resolve_topology(spec, world_size)  # replicas = "auto" -> an int, before anything plans
    layout = plan_layout(world_size, spec, network.n_params, partition_offsets(network, spec))
    return spec, info, network, layout, layout.role_of(world_rank)


def run_train(
    job_path: "str | JobSpec",
    overrides: list[str],
    run_dir_arg: str | None,
    verbose: bool,
    resume: str | None = None,
    progress: bool | None = None,
    init_from: str | None = None,
) -> int:
    """resume: a RUN_DIR to continue from its newest complete checkpoint, or "auto": continue
    --run-dir's newest checkpoint when there is one, else start there afresh (for requeued jobs).
    init_from: a RUN_DIR or params.h5 whose weights a new run starts from (ignored on resume)."""
    world_comm, world_rank, world_size = init_world()
    planned, error, starts = None, None, (None, None)
    auto = resume == "auto"
    # One name for all ranks, chosen by rank 0 (a default name holds rank 0's clock).
    chosen = run_dir_arg if auto else (resume or run_dir_arg)
    default = default_run_dir(job_path if isinstance(job_path, str) else job_path.source)
    run_dir = Path(broadcast(world_comm, str(chosen or default), root=0))
    try:
        _check_resume_arguments(run_dir_arg, resume, init_from)
        planned = load_and_plan(job_path, overrides, world_size, world_rank)
    except Exception as exc:  # noqa: BLE001 - every failure must reach the agreement, or others hang
        error = _setup_error(exc)
    failed = agree_on_errors(world_comm, error)
    if not failed:
        failed = _spec_mismatches(world_comm, world_rank, planned[0])
    if not failed:
        starts, failed = _resume_verdict(world_comm, world_rank, run_dir, planned, resume, init_from)
    if failed:
        _report_setup_errors(failed, world_rank)
        return max(code for _, code, _ in failed)  # the same exit code on every rank
    # The verdict left rank 0 after it had created the run directory: no barrier needed.
    resume_point, source = starts
    job = Job(*planned, run_dir, resume_point, progress_wanted(progress), init_from=source)
    return _run_role(job, world_comm, world_rank, world_size, verbose)


def _check_resume_arguments(run_dir_arg: str | None, resume: str | None, init_from: str | None) -> None:
    if init_from and resume and resume != "auto":
        raise UserInputError(
            f"--init-from {init_from} starts a new run and --resume {resume} continues one: give one of them"
        )
    if resume == "auto" and not run_dir_arg:
        raise UserInputError("--resume auto needs --run-dir: the directory a requeued job continues in")
    if resume and resume != "auto" and run_dir_arg and Path(run_dir_arg).resolve() != Path(resume).resolve():
        raise UserInputError(f"--run-dir {run_dir_arg} and --resume {resume} name different run directories")


def _setup_error(exc: Exception) -> Exception:
    """Bad input keeps its message (exit 2); anything else becomes its traceback (exit 1)."""
    return exc if isinstance(exc, UserInputError) else RuntimeError(traceback.format_exc())


def _resume_verdict(world_comm, world_rank: int, run_dir: Path, planned, resume: str | None, init_from: str | None):
    """Collective: rank 0 alone finds and verifies the checkpoint to resume (hashing its files
    once, not once per rank) or the --init-from source, and creates the run directory; every
    rank gets its verdict. Returns ((ResumePoint or None, init_from path or None), failed) with
    failed as agree_on_errors returns it."""
    verdict = None
    if world_rank == 0:
        try:
            verdict = ("ok", _prepare_run(run_dir, planned, resume, init_from))
        except Exception as exc:  # noqa: BLE001 - the others wait for this verdict: it must be sent
            error = _setup_error(exc)
            verdict = ("error", getattr(error, "exit_code", 1), str(error))
    verdict = broadcast_sleeping(world_comm, verdict, root=0)
    if verdict[0] == "ok":
        return verdict[1], []
    return (None, None), [(0, verdict[1], verdict[2])]


def _prepare_run(run_dir: Path, planned, resume: str | None, init_from: str | None):
    """Rank 0: (the resume point or None, the --init-from params.h5 or None), and the run
    directory prepared for them. A run that resumes continues its checkpoint: a requeued job
    started with --init-from does not start over from the source."""
    spec, _, network, layout, _ = planned
    auto = resume == "auto"
    if auto:
        resume_point = auto_resume_point(run_dir, spec, layout)
    else:
        resume_point = find_resume_point(run_dir, spec, layout) if resume else None
    source = source_params(init_from, spec, network) if init_from and resume_point is None else None
    prepare_run_dir(run_dir, spec, mode="resume" if resume_point else "restart" if auto else "new")
    return resume_point, source


def _spec_mismatches(world_comm, world_rank: int, spec: JobSpec) -> list[tuple[int, int, str]]:
    """Collective: every rank must run the same resolved spec (same file contents, same --set).
    Each rank compares its digest with rank 0's; one reduction tells all whether any differs.
    Only then do the differing ranks' items travel, to rank 0, which names the keys.
    Returns [(rank, 2, message naming the differing keys)] for the ranks that differ (on
    rank 0; elsewhere one entry for this rank: what counts there is that the list is not empty)."""
    mine = spec_items(spec)
    digest = spec_digest(mine)
    differs = broadcast(world_comm, digest, root=0) != digest
    if not any_rank(world_comm, differs):
        return []
    gathered = gather_to_root(world_comm, mine if differs else None, root=0)
    if gathered is None:  # not rank 0, which prints the messages
        return [(world_rank, 2, f"{spec.source}: the job spec differs between ranks")]
    found = [(rank, mismatch_message(spec.source, mine, items)) for rank, items in enumerate(gathered) if items]
    return [(rank, 2, message) for rank, message in found if message]


def _report_setup_errors(failed, world_rank: int) -> None:
    """Rank 0 prints each distinct message once (with the ranks it came from)."""
    if world_rank != 0:
        return
    by_message: dict[str, list[int]] = {}
    for rank, _, message in failed:
        by_message.setdefault(message, []).append(rank)
    for message, ranks in by_message.items():
        where = "" if len(failed) == 1 and ranks == [0] else f" (ranks {', '.join(map(str, ranks))})"
        print(f"error{where}: {message}", file=sys.stderr)


def _run_role(job: Job, world_comm, world_rank: int, world_size: int, verbose: bool) -> int:
    try:
        # Every rank makes logs/ itself: without a shared file system only rank 0 has it.
        (job.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        setup_logging(world_rank, job.role.label, job.run_dir / "logs", verbose)
        from .kernels.thread_pool import set_compute_threads

        set_compute_threads(threads_for_rank(job.spec.topology.threads_per_rank))
        if job.spec.faults.replica_loss != "abort":
            preempt.survive_process_failures()
        result = _run_algorithm(job, world_comm, world_rank, world_size)
        # every rank's own figure (summary.json has the maximum per role)
        log.info("peak RSS %d bytes (now %s)", peak_rss_bytes(), resident_now())
        lead = job.layout.lead_rank
        code = None
        if result.summary is not None:
            _write_outputs(job, result)
            code = _exit_code(job, result.summary)
        if result.lost_ranks:
            _end_without_finalize(code or 0)
        return broadcast(world_comm, code, root=lead) if world_size > 1 else code
    except Exception as exc:  # noqa: BLE001 - any failure must end the whole job, loudly
        code = exc.exit_code if isinstance(exc, DistbeliefError) else 1
        detail = str(exc) if isinstance(exc, DistbeliefError) else traceback.format_exc()
        print(f"error on {rank_label(world_rank, job.role.label)}: {detail}", file=sys.stderr)
        if world_size > 1:
            abort_job(world_comm, code)
        return code
    return 0


def _end_without_finalize(code: int) -> None:
    """A rank has left: MPI_Finalize, and freeing the windows, would wait for it forever
    (measured with MPICH and Open MPI, docs/reliability.md). Everything is written; leave."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _exit_code(job: Job, summary: dict) -> int:
    """The lead decides for every rank: 75 only when the run stopped on a preemption signal and
    its final checkpoint is committed (so a requeue continues from it); 1 when that failed."""
    if summary["stopped_on"] != "preempted":
        return 0
    if summary.get("final_checkpoint") is None:
        print(
            f"error: {job.run_dir}: preempted, but the final checkpoint was not committed within "
            f"checkpoint.grace_seconds = {job.spec.checkpoint.grace_seconds}; not asking for a requeue",
            file=sys.stderr,
        )
        return 1
    print(
        f"{job.run_dir}: preempted; checkpoint committed at step {summary['final_checkpoint']}. Continue "
        f"with --resume {job.run_dir} (or --run-dir {job.run_dir} --resume auto)",
        file=sys.stderr,
    )
    return preempt.EXIT_PREEMPTED


def _run_algorithm(job: Job, world_comm, world_rank: int, world_size: int) -> RoleResult:
    """Run this rank's role; on the lead rank the result holds the summary and final parameters."""
    if job.spec.optimizer.algorithm == "sgd":
        from .roles.sgd import train_sgd

        return RoleResult(*train_sgd(job, world_size))
    if job.spec.optimizer.algorithm == "sandblaster":
        from .roles.sandblaster import run_sandblaster

        return RoleResult(*run_sandblaster(job, world_comm, world_rank))
    from .roles.downpour import run_downpour

    return run_downpour(job, world_comm, world_rank)


def _write_model_file(job: Job, step: int) -> None:
    """RUN_DIR/model.h5 (checkpoint/model_file.py), streamed from the params.h5 just written."""
    from . import __version__
    from .checkpoint.model_file import MODEL_FILE, dataset_attrs, write_model_file

    attrs = {"step": step, "x_scale": job.info.x_scale, "created_by": f"distbelief-mpi {__version__}"}
    attrs.update(dataset_attrs(job.info))
    specs = list(job.spec.model.layers)
    plugins = job.spec.model.plugins
    write_model_file(job.run_dir / MODEL_FILE, job.network, specs, job.run_dir / "params.h5", attrs, plugins)


def _write_outputs(job: Job, result: RoleResult) -> None:
    """The lead: params.h5, model.h5, summary.json, the closing line and warnings a user must see."""
    summary = result.summary
    assert summary is not None
    if result.params is not None:  # else the role has streamed params.h5 itself (it holds no whole vector)
        save_params(job.run_dir / "params.h5", result.params, {"step": summary["steps"]})
    _write_model_file(job, summary["steps"])
    if job.init_from is not None:
        summary["initialized_from"] = str(job.init_from)
    write_summary(job.run_dir, summary)
    print(
        f"{job.run_dir}: test accuracy {summary['test_accuracy']:.4f} after {summary['steps']} steps "
        f"({summary['examples_per_s']:,.0f} examples/s, {summary['wall_s']:.1f} s{_peak_rss_text(summary)})",
        flush=True,
    )
    _warn_lost_replicas(summary)
    for replica_id, count in enumerate(summary.get("rejected_by_replica", [])):
        if count:
            print(
                f"warning: replica {replica_id} sent {count} push(es) holding NaN or Inf; the shards rejected "
                "them (lower the learning rates, or look at that replica's data)",
                file=sys.stderr,
            )


def _warn_lost_replicas(summary: dict) -> None:
    replaced = {r["replica_id"]: r["from_step"] for r in summary.get("replicas_replaced", [])}
    lost = [r for r in summary.get("replicas_lost", []) if r not in replaced]
    if replaced:
        which = ", ".join(f"{r} (from step {step})" for r, step in replaced.items())
        print(f"warning: replica(s) {which} left the job mid-run and were replaced", file=sys.stderr)
    if lost:
        print(
            f"warning: replica(s) {', '.join(map(str, lost))} left the job mid-run; "
            "the others finished training without them",
            file=sys.stderr,
        )


def _peak_rss_text(summary: dict) -> str:
    """', peak RSS 1.21 GB (shard)': the largest of the roles' peaks, or '' when none was measured."""
    peaks = summary.get("peak_rss_bytes") or {}
    if not peaks:
        return ""
    role = max(peaks, key=peaks.get)
    return f", peak RSS {format_bytes(peaks[role])} ({role})"
