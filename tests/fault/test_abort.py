"""An unexpected error on a rank mid-run ends the whole job loudly (MPI_Abort), never a hang."""

from tests.mpi.runner import REPO, run_mpi


def test_a_diverging_replica_aborts_the_whole_job(tmp_path, digits_h5):
    run = run_mpi(
        5,
        [
            "distbelief",
            "train",
            str(REPO / "jobs" / "digits_downpour.toml"),
            "--set",
            f"data.path={digits_h5}",
            "--run-dir",
            str(tmp_path / "run"),
            "--set",
            'optimizer.server_rule="sgd"',
            "--set",
            "optimizer.server_learning_rate=1e30",
            "--set",
            "optimizer.warmstart_steps=0",
        ],
        tmp_path,
        timeout=120,
    )
    assert run.returncode not in (0, 124), run.explain()  # ended, and not by the test's timeout
    assert "error on rank" in run.stderr and "training loss became" in run.stderr, run.stderr[-3000:]
    assert not (tmp_path / "run" / "summary.json").exists()
