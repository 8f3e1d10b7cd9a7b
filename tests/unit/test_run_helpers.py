import io

import numpy as np
import pytest

from distbelief_mpi.checkpoint.params_file import load_params, save_params
from distbelief_mpi.checkpoint.store import commit_checkpoint, complete_checkpoints, newest_complete, read_manifest
from distbelief_mpi.config import Run
from distbelief_mpi.errors import CheckpointError
from distbelief_mpi.runtime.limits import RunClock, fraction_done, limit_reached
from distbelief_mpi.runtime.progress import Progress, format_seconds
from distbelief_mpi.runtime.thread_budget import threads_for_rank


def test_first_limit_reached_wins():
    limits = Run(steps=100, epochs=2.0, seconds=60.0)
    assert limit_reached(limits, RunClock(99, 1.9, 59)) is None
    assert limit_reached(limits, RunClock(100, 0, 0)) == "steps"
    assert limit_reached(limits, RunClock(5, 2.0, 0)) == "epochs"
    assert limit_reached(limits, RunClock(5, 0, 61)) == "seconds"
    assert fraction_done(limits, RunClock(50, 1.5, 6)) == 0.75
    assert fraction_done(Run(steps=10), RunClock(20, 0, 0)) == 1.0


def test_progress_prints_rate_limited_lines_with_eta():
    stream = io.StringIO()
    progress = Progress(interval=0.0, stream=stream)
    progress.maybe_print("step 1", 0.5)
    assert stream.getvalue() == ""  # interval 0 means never
    progress = Progress(interval=1e-9, stream=stream)
    progress.maybe_print("step 2", 0.5)
    assert "step 2 |  50.0% elapsed" in stream.getvalue() and "eta" in stream.getvalue()
    assert format_seconds(3725) == "1:02:05" and format_seconds(65) == "1:05"


def test_threads_from_spec_then_slurm_then_one():
    assert threads_for_rank(3, {"SLURM_CPUS_PER_TASK": "8"}) == 3
    assert threads_for_rank(0, {"SLURM_CPUS_PER_TASK": "8"}) == 8
    assert threads_for_rank(0, {"SLURM_CPUS_PER_TASK": "junk"}) == 1
    assert threads_for_rank(0, {}) == 1


def test_params_round_trip_and_damage_is_named(tmp_path):
    params = np.arange(1000, dtype=np.float32)
    save_params(tmp_path / "p.h5", params, {"step": 3})
    loaded, attrs = load_params(tmp_path / "p.h5")
    assert np.array_equal(loaded, params) and attrs["step"] == 3
    assert list(tmp_path.iterdir()) == [tmp_path / "p.h5"]  # no temporary left behind
    raw = (tmp_path / "p.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="cut.h5"):
        load_params(tmp_path / "cut.h5")
    with pytest.raises(CheckpointError, match="not found"):
        load_params(tmp_path / "none.h5")


def test_checkpoints_commit_with_manifest_and_prune(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        commit_checkpoint(root, step, np.full(50, step, np.float32), {"examples_seen": step * 4}, keep=2)
    kept = complete_checkpoints(root)
    assert [d.name for d in kept] == ["step-000000030", "step-000000020"]
    manifest = read_manifest(kept[0])
    assert manifest["step"] == 30 and manifest["examples_seen"] == 120
    assert set(manifest["files"]) == {"params.h5"}


def test_partial_or_damaged_checkpoint_is_skipped(tmp_path):
    root = tmp_path / "checkpoints"
    commit_checkpoint(root, 1, np.ones(50, np.float32), {}, keep=5)
    newest = commit_checkpoint(root, 2, np.ones(50, np.float32), {}, keep=5)
    (root / "step-000000003").mkdir()  # crashed before its manifest
    blob = bytearray((newest / "params.h5").read_bytes())
    blob[-1] ^= 0xFF
    (newest / "params.h5").write_bytes(bytes(blob))  # damaged after commit
    assert [d.name for d in complete_checkpoints(root)] == ["step-000000001"]
    assert read_manifest(root / "step-000000003") is None and read_manifest(newest) is None
    directory, manifest = newest_complete(root)
    assert directory.name == "step-000000001" and manifest["step"] == 1
    assert newest_complete(tmp_path / "nothing") is None


def test_progress_shows_in_batch_jobs_at_their_own_interval():
    from distbelief_mpi.runtime.progress import interval_s, wanted

    assert wanted(None, {}) and wanted(None, {"SLURM_JOB_ID": "12"})
    assert wanted(True, {"SLURM_JOB_ID": "12"}) and not wanted(False, {})
    run = Run(steps=1)
    assert interval_s(run, {}) == 10.0 and interval_s(run, {"SLURM_JOB_ID": "12"}) == 60.0
    assert interval_s(Run(steps=1, batch_progress_seconds=0), {"PBS_JOBID": "3"}) == 0


def test_resume_auto_refuses_to_start_afresh_over_work(tmp_path):
    from distbelief_mpi.checkpoint.resume import auto_resume_point
    from distbelief_mpi.errors import UserInputError

    run_dir = tmp_path / "run"
    assert auto_resume_point(run_dir, None, None) is None  # nothing yet: start afresh
    (run_dir / "checkpoints" / "step-000000005").mkdir(parents=True)  # killed mid-write: still afresh
    assert auto_resume_point(run_dir, None, None) is None
    damaged = commit_checkpoint(run_dir / "checkpoints", 10, np.ones(8, np.float32), {}, keep=3)
    (damaged / "params.h5").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="all damaged"):
        auto_resume_point(run_dir, None, None)
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "summary.json").write_text("{}")
    with pytest.raises(UserInputError, match="holds a finished run"):
        auto_resume_point(finished, None, None)


def test_restarting_a_run_dir_keeps_the_abandoned_metrics(tmp_path):
    from distbelief_mpi.config import parse_job
    from distbelief_mpi.runtime.rundir import prepare_run_dir

    spec = parse_job({"data": {"path": "d.h5"}, "run": {"steps": 1}})
    prepare_run_dir(tmp_path / "r", spec)
    (tmp_path / "r" / "metrics.jsonl").write_text('{"kind": "train"}\n')
    prepare_run_dir(tmp_path / "r", spec, mode="restart")
    assert (tmp_path / "r" / "metrics-abandoned-1.jsonl").read_text() == '{"kind": "train"}\n'
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
