"""Damaged checkpoints: truncated, zeroed, bit-flipped, wrong-schema data files and a broken
manifest are never accepted; resume falls back to the previous complete checkpoint, or stops
with a clear error (exit 2) naming the directory when no usable one is left."""

import json
import shutil

import h5py
import pytest

from tests.mpi.runner import REPO, assert_all_ranks, run_mpi

JOB = str(REPO / "jobs" / "digits_mlp.toml")


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def zero(path):
    path.write_bytes(bytes(path.stat().st_size))


def flip_a_byte(path):
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    path.write_bytes(bytes(blob))


def wrong_schema(path):
    path.unlink()
    with h5py.File(path, "w") as handle:
        handle["something_else"] = [1, 2, 3]


def broken_manifest(path):
    (path.parent / "manifest.json").write_text("{ not json")


DAMAGE = {
    "truncated": truncate,
    "zeroed": zero,
    "bit-flipped": flip_a_byte,
    "wrong schema": wrong_schema,
    "broken manifest": broken_manifest,
}


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory, digits_h5):
    """A finished run with complete checkpoints at steps 10, 20 and 30."""
    base = tmp_path_factory.mktemp("ckpt")
    run = run_mpi(
        1,
        [
            "distbelief",
            "train",
            JOB,
            "--set",
            f"data.path={digits_h5}",
            "--run-dir",
            str(base / "run"),
            "--set",
            "run.epochs=0",
            "--set",
            "run.steps=30",
            "--set",
            "checkpoint.every_steps=10",
            "--set",
            "checkpoint.keep=3",
        ],
        base,
    )
    assert_all_ranks(run, 1)
    return base / "run"


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, digits_h5, checkpointed_run, kind):
    run_dir = tmp_path / "run"
    shutil.copytree(checkpointed_run, run_dir)
    DAMAGE[kind](run_dir / "checkpoints" / "step-000000030" / "params.h5")
    run = run_mpi(
        1,
        [
            "distbelief",
            "train",
            JOB,
            "--set",
            f"data.path={digits_h5}",
            "--resume",
            str(run_dir),
            "--set",
            "run.epochs=0",
            "--set",
            "run.steps=40",
        ],
        tmp_path,
    )
    assert_all_ranks(run, 1)
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from"]["step"] == 20


def test_no_usable_checkpoint_is_a_clear_error(tmp_path, digits_h5, checkpointed_run):
    run_dir = tmp_path / "run"
    shutil.copytree(checkpointed_run, run_dir)
    for step in (10, 20, 30):
        flip_a_byte(run_dir / "checkpoints" / f"step-{step:09d}" / "params.h5")
    for resume in (["--resume", str(run_dir)], ["--run-dir", str(run_dir), "--resume", "auto"]):
        run = run_mpi(
            1,
            [
                "distbelief",
                "train",
                JOB,
                "--set",
                f"data.path={digits_h5}",
                *resume,
                "--set",
                "run.epochs=0",
                "--set",
                "run.steps=40",
            ],
            tmp_path,
        )
        assert_all_ranks(run, 1, exit_code=2)
        assert str(run_dir) in run.stderr and "Traceback" not in run.stderr
