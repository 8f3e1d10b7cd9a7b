"""`distbelief report`: figures and report.md from run directories (fake ones, and one real run)."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from matplotlib.image import imread  # noqa: E402

from distbelief_mpi.cli import main  # noqa: E402
from distbelief_mpi.errors import UserInputError  # noqa: E402
from distbelief_mpi.report import FIGURES, load_run, run_report, write_report  # noqa: E402

JOB = Path(__file__).resolve().parents[2] / "jobs" / "digits_mlp.toml"


def make_run(root, name, summary, records):
    run = root / name
    run.mkdir(parents=True)
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    if records is not None:
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def train(time_s, step, examples, loss):
    return {
        "kind": "train",
        "time_s": time_s,
        "step": step,
        "epoch": step / 100,
        "examples": examples,
        "train_loss": loss,
        "train_accuracy": 0.9,
        "examples_per_s": 1000.0,
    }


def evaluate(time_s, step, accuracy):
    return {
        "kind": "eval",
        "time_s": time_s,
        "step": step,
        "test_examples": 100,
        "test_loss": 0.3,
        "test_accuracy": accuracy,
    }


SGD = {
    "algorithm": "sgd",
    "world_size": 1,
    "n_replicas": 1,
    "n_shards": 0,
    "steps": 300,
    "examples_seen": 9600,
    "wall_s": 3.2,
    "examples_per_s": 3000.0,
    "final_train_loss": 0.25,
    "test_accuracy": 0.9123,
    "test_loss": 0.3,
}
DOWNPOUR = {
    "algorithm": "downpour",
    "server_rule": "adagrad",
    "world_size": 5,
    "n_replicas": 3,
    "n_shards": 2,
    "steps": 900,
    "examples_seen": 28800,
    "wall_s": 2.5,
    "examples_per_s": 11000.0,
    "replica_examples_per_s": [3900.0, 3700.0, 3600.0],
    "final_train_loss": 0.2,
    "test_accuracy": 0.9456,
    "test_loss": 0.2,
    "pushes_applied": 1790,
    "pushes_rejected": 3,
    "staleness_mean": 2.5,
    "staleness_max": 7,
    "staleness_hist": [100, 500, 600, 300, 200, 60, 20, 10] + [0] * 56,
}


def sgd_records():
    return [
        train(1.0, 100, 3200, 1.2),
        evaluate(1.1, 100, 0.6),
        train(2.0, 200, 6400, 0.6),
        evaluate(2.1, 200, 0.8),
        train(3.0, 300, 9600, 0.25),
        evaluate(3.1, 300, 0.9123),
    ]


def downpour_records():
    return [evaluate(0.5, 100, 0.7), train(1.0, 150, 4800, 0.9), train(2.0, 300, 9600, 0.2), evaluate(2.5, 300, 0.9456)]


def decode(path):
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200 and image.shape[2] in (3, 4)
    assert image[..., :3].std() > 0.01  # not a blank canvas
    return image


def table_rows(text):
    return [line for line in text.splitlines() if line.startswith("| `")]


def test_several_runs_give_every_figure_a_table_row_each_and_the_same_bytes_twice(tmp_path):
    sgd = make_run(tmp_path, "sgd", SGD, sgd_records())
    dp = make_run(tmp_path, "dp", DOWNPOUR, downpour_records())
    out = tmp_path / "out"
    written = write_report([sgd, dp], out, generated="TODAY")
    assert [p.name for p in written] == FIGURES + ["report.md"]
    for name in FIGURES:
        assert (out / name).stat().st_size > 10_000
        decode(out / name)
    text = (out / "report.md").read_text()
    assert "Generated TODAY from 2 run(s)." in text
    rows = table_rows(text)
    assert rows[0] == ("| `sgd` | sgd | - | 0 x 1 | 300 | 3.2 | 3,000 | 0.2500 | 91.23% | - | - |")
    assert rows[1] == (
        "| `dp` | downpour | adagrad | 2 x 3 | 900 | 2.5 | 11,000 | 0.2000 | 94.56% | 1790 / 3 | 2.50 / 7 |"
    )
    for name in FIGURES:
        assert f"[{name}]({name})" in text and f"![{name}]({name})" in text
    again = write_report([sgd, dp], tmp_path / "again", generated="TODAY")  # deterministic: same bytes
    for a, b in zip(written, again):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_single_sgd_run_skips_staleness_with_a_note_and_defaults_out(tmp_path, capsys):
    sgd = make_run(tmp_path, "sgd", SGD, sgd_records())
    assert main(["report", str(sgd)]) == 0
    out = sgd / "report"
    assert not (out / "staleness.png").exists()
    decode(out / "examples_per_s.png")
    text = (out / "report.md").read_text()
    assert "staleness.png: not drawn (no run has a staleness histogram" in text
    assert "](staleness.png)" not in text
    assert str(out) in capsys.readouterr().out


def test_several_runs_need_out(tmp_path, capsys):
    a = make_run(tmp_path, "a", SGD, sgd_records())
    b = make_run(tmp_path, "b", SGD, sgd_records())
    assert main(["report", str(a), str(b)]) == 2
    assert "--out" in capsys.readouterr().err


def test_runs_with_one_name_get_parent_folders(tmp_path):
    a = make_run(tmp_path / "x", "run", SGD, sgd_records())
    b = make_run(tmp_path / "y", "run", SGD, sgd_records())
    text = (write_report([a, b], tmp_path / "out", generated="X")[-1]).read_text()
    assert [row.split(" | ")[0] for row in table_rows(text)] == ["| `x/run`", "| `y/run`"]


def test_resumed_run_time_is_offset_across_restarts(tmp_path):
    first = [train(1.0, 100, 3200, 1.0), evaluate(1.5, 100, 0.5), train(2.0, 200, 6400, 0.8)]
    # resumed from the checkpoint at step 150: the clock restarts at 0
    second = [train(0.8, 250, 8000, 0.6), evaluate(0.9, 250, 0.7), train(1.7, 300, 9600, 0.5), evaluate(1.8, 300, 0.8)]
    third = [train(0.5, 350, 11200, 0.4), evaluate(0.6, 350, 0.85)]
    run = load_run(make_run(tmp_path, "res", dict(SGD, wall_s=0.6), first + second + third))
    assert run.restarts == pytest.approx([2.0, 3.8])
    assert run.train_loss.time_s == pytest.approx([1.0, 2.0, 2.8, 3.7, 4.3])
    assert run.test_accuracy.time_s == pytest.approx([1.5, 2.9, 3.8, 4.4])
    assert run.test_accuracy.value[-1] == 0.85  # the last eval line is the final evaluation
    assert run.test_accuracy.examples == pytest.approx([3200, 8000, 9600, 11200])
    text = write_report([run.path], tmp_path / "out", generated="X")[-1].read_text()
    assert "| 0.6 (all 3 invocations: 4.4) |" in text and "resumed 2 time(s)" in text


def test_downpour_examples_are_scaled_to_all_replicas(tmp_path):
    run = load_run(make_run(tmp_path, "dp", DOWNPOUR, downpour_records()))
    assert run.examples_scale == pytest.approx(3.0)
    assert run.train_loss.examples == pytest.approx([14400, 28800])
    assert run.test_accuracy.examples == pytest.approx([9600, 28800])


def test_unfinished_run_without_summary_is_drawn_from_its_metrics(tmp_path):
    run = make_run(tmp_path, "crashed", None, sgd_records()[:3])
    (run / "job.toml").write_text('[optimizer]\nalgorithm = "sgd"\n[topology]\nreplicas = 1\nshards = 0\n')
    written = write_report([run], tmp_path / "out", generated="X")
    assert "examples_per_s.png" not in [p.name for p in written]
    text = written[-1].read_text()
    assert table_rows(text)[0].startswith("| `crashed` | sgd | - | 0 x 1 | - |")
    assert "no summary.json" in text
    decode(tmp_path / "out" / "loss_vs_time.png")


def test_missing_or_empty_run_dir_is_a_user_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'}: no such run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "holds neither summary.json nor metrics.jsonl" in err and "Traceback" not in err


def test_bad_metrics_line_names_file_and_line(tmp_path, capsys):
    run = make_run(tmp_path, "bad", SGD, sgd_records())
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "time_s": 4.0, "step": 4\n')
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'metrics.jsonl'}: line 7: not valid JSON" in err and "Traceback" not in err
    (run / "summary.json").write_text("{oops")
    with pytest.raises(UserInputError, match=r"summary.json: line 1: not valid JSON"):
        load_run(run)


def test_missing_matplotlib_is_a_user_error(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path, "sgd", SGD, sgd_records())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'distbelief-mpi[report]'" in err and "Traceback" not in err
    with pytest.raises(UserInputError, match="matplotlib"):
        run_report([str(run)], None)


def test_report_of_a_real_training_run(tmp_path, capsys):
    from data_tools.cli import main as data_main

    data = tmp_path / "digits.h5"
    assert data_main(["digits", str(data)]) == 0
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(JOB),
                "--set",
                f"data.path={data}",
                "--set",
                "run.steps=50",
                "--set",
                "run.eval_every=25",
                "--set",
                "run.progress_seconds=0",
                "--run-dir",
                str(run),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    out = run / "report"
    for name in FIGURES[:5]:
        decode(out / name)
    rows = table_rows((out / "report.md").read_text())
    assert len(rows) == 1 and rows[0].startswith("| `run` | sgd | - | 0 x 1 | 50 |")
    loaded = load_run(run)
    assert loaded.test_accuracy.step == [25, 50]  # one evaluation during training, then the final one (once)
