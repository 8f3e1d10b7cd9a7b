"""Watching a run: progress lines (one each, greppable, no figure before it exists), a single
final eval line, and what summary.json's examples_per_s covers."""

import contextlib
import io
import json
import math
import re

import pytest

from distbelief_mpi.cli import main
from distbelief_mpi.roles.loop import RATE_COVERS, Window
from distbelief_mpi.runtime.progress import Progress, figures_text
from tests.mpi.runner import REPO

# progress step 12 epoch 0.50 ex/s 1,234 loss 0.1234 acc 0.9000 [test_acc 0.9] | 5.0% elapsed 0:01 eta 0:19
LINE = re.compile(
    r"^progress step \d+ epoch [\d.]+ ex/s [\d,]+ loss \d+\.\d{4} acc [\d.]+( test_acc [\d.]+)? "
    r"\|\s+[\d.]+% elapsed [\d:]+ eta ([\d:]+|\?)$"
)


def test_a_figure_not_known_yet_is_left_out_not_printed_as_zero():
    assert figures_text("step", 3, 0.5, 1234.4, loss=float("nan"), acc=None) == "step 3 epoch 0.50 ex/s 1,234"
    assert figures_text("iteration", 1, 1.0, None, loss=0.25) == "iteration 1 epoch 1.00 loss 0.2500"


def test_an_empty_window_reports_the_last_flushed_means():
    window = Window()
    assert all(math.isnan(value) for value in window.latest())  # before any step
    window.add(0.5, 3, 4)
    window.last_loss, window.last_accuracy = window.means()
    window.reset()  # what a metrics line does: the progress line right after must not say 0
    assert window.latest() == (0.5, 0.75)


def test_eta_counts_from_the_restart_and_is_unknown_before_progress():
    stream = io.StringIO()
    progress = Progress(interval=1e-9, stream=stream)
    progress.restart_clock(fraction_done=0.5)  # a resumed run, half done
    progress.print("step 1", 0.5)
    assert stream.getvalue().startswith("progress step 1 |  50.0%") and stream.getvalue().endswith("eta ?\n")


@pytest.fixture(scope="module")
def sgd_run(tmp_path_factory, digits_h5):
    where = tmp_path_factory.mktemp("watch")
    sets = ["data.path=" + str(digits_h5), "run.epochs=0", "run.steps=300", "run.eval_every=100"]
    sets += ["run.progress_seconds=0.0001"]
    args = ["train", str(REPO / "jobs" / "digits_mlp.toml"), "--run-dir", str(where / "run"), "--progress"]
    for value in sets:
        args += ["--set", value]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(args)
    return code, where / "run", err.getvalue()


def test_progress_lines_are_whole_lines_with_rate_loss_accuracy_eta(sgd_run):
    code, _, err = sgd_run
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("progress ")]
    assert lines, "no progress line"
    bad = [line for line in lines if not LINE.match(line) or " loss 0.0000 " in line]
    assert not bad, bad[:3]


def test_the_last_step_has_one_eval_line_and_the_rate_says_what_it_covers(sgd_run):
    _, run_dir, _ = sgd_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    eval_steps = [r["step"] for r in records if r["kind"] == "eval"]
    assert eval_steps == [100, 200, 300]  # 300 once: the final evaluation's
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["examples_per_s_covers"] == RATE_COVERS and summary["warm_up_s"] >= 0
    assert summary["examples_per_s"] > 0
