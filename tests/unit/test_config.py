import tomllib
from pathlib import Path

import pytest

from distbelief_mpi.config import JobSpec, load_job, parse_job, to_toml
from distbelief_mpi.errors import ConfigError
from distbelief_mpi.model.spec import LayerSpec

JOBS = Path(__file__).resolve().parents[2] / "jobs"
MINIMAL = {"data": {"path": "d.h5"}, "run": {"steps": 5}}


def problems_of(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_job(raw, "job.toml")
    return info.value.problems


def test_defaults_fill_every_key():
    spec = parse_job(MINIMAL)
    assert spec.topology.replicas == 1 and spec.optimizer.algorithm == "sgd"
    assert spec.model.layers == ()


@pytest.mark.parametrize("job", sorted(JOBS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_jobs_parse(job):
    assert isinstance(load_job(job), JobSpec)


def test_every_problem_is_reported_at_once_with_its_key():
    raw = {
        "bogus": {},
        "data": {"pth": "x"},
        "run": {"steps": -1, "seed": "a"},
        "optimizer": {"learning_rate": 0, "batch_size": 1.5},
        "model": {"layers": [{"type": "dense"}, {"type": "conv"}]},
    }
    problems = "\n".join(problems_of(raw))
    for key in (
        "[bogus]",
        "data.pth",
        "run.steps",
        "run.seed",
        "optimizer.learning_rate",
        "optimizer.batch_size",
        "model.layers[0].units",
        "model.layers[1].type",
        "data.path",
    ):
        assert key in problems


def test_type_problem_is_not_reported_twice():
    problems = problems_of({"data": {"path": 3}, "run": {"steps": 1}})
    assert len(problems) == 1 and problems[0].startswith("data.path: expected str")


def test_needs_a_run_limit():
    assert any("set at least one limit" in p for p in problems_of({"data": {"path": "x"}}))


def test_bool_is_not_an_int_and_int_is_a_float():
    assert any("topology.replicas" in p for p in problems_of({**MINIMAL, "topology": {"replicas": True}}))
    assert parse_job({**MINIMAL, "optimizer": {"learning_rate": 1}}).optimizer.learning_rate == 1.0


def test_overrides_parse_as_toml_and_bare_words_as_strings(tmp_path):
    job = tmp_path / "j.toml"
    job.write_text('[data]\npath = "a.h5"\n[run]\nsteps = 1\n')
    spec = load_job(job, ["run.steps=7", "data.path=other/b.h5", "optimizer.learning_rate=0.5"])
    assert (spec.run.steps, spec.data.path, spec.optimizer.learning_rate) == (7, "other/b.h5", 0.5)


def test_bad_overrides_are_named(tmp_path):
    job = tmp_path / "j.toml"
    job.write_text('[data]\npath = "a.h5"\n[run]\nsteps = 1\n')
    with pytest.raises(ConfigError) as info:
        load_job(job, ["nodot=1", "run.stepz=3", "run.steps=x"])
    text = str(info.value)
    assert "nodot" in text and "run.stepz" in text and "run.steps" in text and str(job) in text


def test_missing_and_invalid_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_job(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\n")
    with pytest.raises(ConfigError, match="(?s)bad.toml.*not valid TOML"):
        load_job(bad)


def test_resolved_toml_round_trips():
    raw = {
        **MINIMAL,
        "model": {
            "layers": [
                {"type": "local", "filters": 4, "patch": 3},
                {"type": "l2pool", "size": 2},
                {"type": "lcn", "size": 3},
                {"type": "dense", "units": 8, "activation": "tanh"},
            ]
        },
    }
    spec = parse_job(raw, "src")
    again = parse_job(tomllib.loads(to_toml(spec)), "src")
    assert again == spec
    assert again.model.layers[0] == LayerSpec("local", filters=4, patch=3, stride=1, activation="relu")


def test_layer_values_are_checked():
    problems = "\n".join(
        problems_of(
            {
                **MINIMAL,
                "model": {
                    "layers": [
                        {"type": "dense", "units": 0, "activation": "swish"},
                        {"type": "lcn", "size": 4},
                        {"type": "maxpool", "size": 2, "extra": 1},
                        "notatable",
                    ]
                },
            }
        )
    )
    for text in (
        "units: must be >= 1",
        "activation: 'swish'",
        "size: a contrast",
        "extra: unknown key",
        "model.layers[3]: expected an inline table",
    ):
        assert text in problems


def test_plan_prints_problems_on_stderr_with_exit_2(tmp_path, capsys):
    from distbelief_mpi.cli import main

    job = tmp_path / "j.toml"
    job.write_text(f'[data]\npath = "{tmp_path / "none.h5"}"\n[run]\nsteps = 1\n')
    assert main(["plan", str(job), "-n", "3"]) == 2
    captured = capsys.readouterr()
    assert "needs 1 ranks" in captured.err and "got 3" in captured.err and captured.out == ""
    assert main(["plan", str(job), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "replica  0/0" in out and "parameter ranges need the dataset" in out
