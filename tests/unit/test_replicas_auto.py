"""topology.replicas = "auto": parsed, resolved per world size into an int, and the sizes that fit
named wherever a size does not (plan with and without -n, train's set-up). No MPI."""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distbelief_mpi.cli import main
from distbelief_mpi.config import AUTO_REPLICAS, load_job, parse_job, spec_items, to_toml
from distbelief_mpi.errors import ConfigError, UserInputError
from distbelief_mpi.layout import (
    Sizes,
    WorldSizeError,
    layout_problems,
    plan_layout,
    resolve_topology,
    sizes_that_fit,
)
from distbelief_mpi.train import load_and_plan

RANK_KEYS = ("topology.coordinator", "topology.shards", "topology.replicas", "topology.partitions_per_replica")


def spec_with(algorithm="downpour", inject="none", inject_replica=0, **topology):
    raw = {
        "data": {"path": "d.h5"},
        "run": {"steps": 1},
        "optimizer": {"algorithm": algorithm},
        "faults": {"inject": inject, "inject_replica": inject_replica},
        "topology": topology,
    }
    return parse_job(raw, source="job.toml")


def write_job(tmp_path, topology: str, algorithm="downpour"):
    job = tmp_path / "job.toml"
    job.write_text(
        f'[topology]\n{topology}\n[optimizer]\nalgorithm = "{algorithm}"\n'
        f'[data]\npath = "{tmp_path / "absent.h5"}"\n[run]\nsteps = 1\n'
    )
    return job


# -- the job spec ---------------------------------------------------------------------------------


def test_auto_is_accepted_in_the_file_and_by_set(tmp_path):
    job = write_job(tmp_path, 'shards = 1\nreplicas = "auto"')
    assert load_job(job).topology.replicas == AUTO_REPLICAS
    plain = write_job(tmp_path, "shards = 1")
    assert load_job(plain, ["topology.replicas=auto"]).topology.replicas == AUTO_REPLICAS


def test_an_unresolved_spec_writes_auto_and_reads_back(tmp_path):
    spec = spec_with(shards=1, replicas="auto")
    assert spec_items(spec)["topology.replicas"] == '"auto"'
    assert 'replicas = "auto"' in to_toml(spec)
    again = tmp_path / "again.toml"
    again.write_text(to_toml(spec))
    assert load_job(again).topology == spec.topology


@pytest.mark.parametrize("value", [0, -1, -3, "many", "Auto", 2.5, True])
def test_other_values_are_refused_naming_the_key(value):
    with pytest.raises(ConfigError) as caught:
        spec_with(shards=1, replicas=value)
    assert caught.value.exit_code == 2
    assert caught.value.problems == [f'topology.replicas: must be an int >= 1 or "auto", got {value!r}']


def test_inject_replica_is_checked_against_the_resolved_count():
    spec = spec_with(shards=1, replicas="auto", inject="leave", inject_replica=2)
    assert resolve_topology(spec, 4).topology.replicas == 3  # replicas 0-2: replica 2 exists
    with pytest.raises(ConfigError, match=r"faults.inject_replica: .*replicas - 1 = 1.*\"auto\" on 3 ranks"):
        resolve_topology(spec, 3)
    with pytest.raises(ConfigError, match="faults.inject_replica"):
        spec_with(shards=1, replicas="auto", inject="leave", inject_replica=-1)


# -- resolving ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topology", "world_size", "replicas"),
    [
        ({"shards": 1}, 2, 1),
        ({"shards": 1}, 3, 2),
        ({"shards": 2}, 9, 7),
        ({"shards": 1, "partitions_per_replica": 2}, 7, 3),
        ({"shards": 2, "partitions_per_replica": 2, "partition_grid": "1x2"}, 4, 1),
    ],
)
def test_auto_fills_the_ranks_after_the_shards(topology, world_size, replicas):
    resolved = resolve_topology(spec_with(replicas="auto", **topology), world_size)
    assert resolved.topology.replicas == replicas and type(resolved.topology.replicas) is int
    assert resolved.topology == dataclasses.replace(resolved.topology, **topology)  # nothing else changed
    assert len(plan_layout(world_size, resolved, 1000).ranks_of("replica")) == replicas * (
        topology.get("partitions_per_replica", 1)
    )


def test_auto_after_a_coordinator():
    spec = spec_with(algorithm="sandblaster", coordinator=True, shards=2, replicas="auto")
    assert sizes_that_fit(spec) == Sizes(4, 1)
    assert resolve_topology(spec, 6).topology.replicas == 3


def test_a_spec_without_auto_is_returned_as_it_is():
    spec = spec_with(shards=2, replicas=3)
    assert resolve_topology(spec, 5) is spec
    assert resolve_topology(spec, 4) is spec  # plan_layout reports the misfit, with the model's problems


def test_sgd_auto_is_one_replica_on_one_rank_and_refused_elsewhere():
    spec = spec_with(algorithm="sgd", replicas="auto")
    assert resolve_topology(spec, 1).topology.replicas == 1
    with pytest.raises(WorldSizeError) as caught:
        resolve_topology(spec, 3)
    message = str(caught.value)
    assert message.startswith("job.toml: cannot run on 3 ranks:")
    assert "the only size that fits is 1 (optimizer.algorithm = sgd trains one replica)" in message
    assert "set topology.replicas = 1" not in message  # "auto" is not the problem, the size is


def test_a_size_that_holds_no_whole_replica_names_the_keys_and_the_nearest_sizes():
    spec = spec_with(shards=1, replicas="auto", partitions_per_replica=2)
    with pytest.raises(WorldSizeError) as caught:
        resolve_topology(spec, 4)
    message = str(caught.value)
    assert message.startswith("job.toml: cannot run on 4 ranks:")
    assert "needs 1 + 2k ranks: 3, 5, 7, ..." in message
    assert "the nearest sizes that fit are 3 (1 replica) and 5 (2 replicas)" in message
    assert all(key in message for key in RANK_KEYS)
    small = str(pytest.raises(WorldSizeError, resolve_topology, spec, 2).value)
    assert "the smallest size that fits is 3 (1 replica)" in small


def test_plan_layout_refuses_an_unresolved_spec():
    with pytest.raises(ValueError, match="resolve_topology"):
        plan_layout(3, spec_with(shards=1, replicas="auto"), 1000)


# -- fixed topologies: the same message, with what "auto" would do --------------------------------


def test_a_fixed_topology_on_the_wrong_size_names_the_one_size_and_auto():
    problems = layout_problems(4, spec_with(shards=2, replicas=3), 1000)
    assert len(problems) == 1
    assert problems[0].startswith("needs 5 ranks (2 shards + 3 replicas x 1 partitions), got 4")
    assert all(key in problems[0] for key in RANK_KEYS)
    assert 'the only size that fits is 5; topology.replicas = "auto" would fit 4 (2 replicas)' in problems[0]
    partitioned = layout_problems(4, spec_with(shards=1, replicas=1, partitions_per_replica=2), 1000)
    assert 'the only size that fits is 3; topology.replicas = "auto" would fit 3 or 5' in partitioned[0]


def test_world_size_error_is_a_user_input_error_with_every_problem():
    spec = spec_with(shards=40, replicas="auto")
    with pytest.raises(WorldSizeError) as caught:
        plan_layout(40, spec, 100)
    assert isinstance(caught.value, UserInputError) and caught.value.exit_code == 2
    assert len(caught.value.problems) == 2  # the size and the shards that 100 parameters cannot fill


@given(st.integers(1, 50), st.integers(0, 8), st.integers(1, 200))
def test_sizes_fit_and_nearest_agree_with_counting(first, step, world_size):
    sizes = Sizes(first, step)
    fitting = [first] if step == 0 else list(range(first, 500, step))
    assert sizes.fit(world_size) == (world_size in fitting)
    below, above = sizes.nearest(world_size)
    assert below == max((n for n in fitting if n < world_size), default=None)
    assert above == min((n for n in fitting if n > world_size), default=None)


# -- distbelief plan ------------------------------------------------------------------------------


def test_plan_without_n_names_the_sizes_and_plans_the_smallest(tmp_path, capsys):
    job = write_job(tmp_path, 'shards = 1\nreplicas = "auto"\npartitions_per_replica = 2')
    assert main(["plan", str(job), "--input-shape", "1,8,8", "--classes", "10"]) == 0
    out = capsys.readouterr().out
    assert f"{job}: needs 1 + 2k ranks: 3, 5, 7, ...; the layout on 3 ranks:" in out
    assert "replica  0/1" in out and "replica  1/0" not in out
    assert 'topology.replicas = "auto": 1 on 3 ranks (resolved per launch' in out


def test_plan_without_n_for_a_fixed_topology(tmp_path, capsys):
    job = write_job(tmp_path, "shards = 2\nreplicas = 3")
    assert main(["plan", str(job), "--input-shape", "64", "--classes", "10"]) == 0
    out = capsys.readouterr().out
    assert f"{job}: needs 5 ranks; the layout on 5 ranks:" in out and "replica  2/0" in out


def test_plan_with_n_resolves_auto(tmp_path, capsys):
    job = write_job(tmp_path, 'shards = 2\nreplicas = "auto"')
    assert main(["plan", str(job), "-n", "6", "--input-shape", "64", "--classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "replica  3/0" in out and "replica  4/0" not in out
    assert 'topology.replicas = "auto": 4 on 6 ranks' in out


def test_plan_with_an_n_that_does_not_fit_exits_2_naming_file_keys_and_sizes(tmp_path, capsys):
    job = write_job(tmp_path, 'shards = 1\nreplicas = "auto"\npartitions_per_replica = 2')
    assert main(["plan", str(job), "-n", "6"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"error: {job}: cannot run on 6 ranks:" in captured.err
    assert all(key in captured.err for key in RANK_KEYS)
    assert "the nearest sizes that fit are 5 (2 replicas) and 7 (3 replicas)" in captured.err


def test_plan_refuses_a_bad_replicas_value_with_exit_2(tmp_path, capsys):
    job = write_job(tmp_path, "shards = 1\nreplicas = 0")
    assert main(["plan", str(job)]) == 2
    assert f"{job}: 1 problem(s)" in capsys.readouterr().err


# -- distbelief train's set-up: the same message as plan's ----------------------------------------


def test_train_setup_resolves_auto_and_fails_with_plans_message(tmp_path, digits_h5, capsys):
    job = write_job(tmp_path, 'shards = 1\nreplicas = "auto"\npartitions_per_replica = 2')
    overrides = [f"data.path={digits_h5}"]
    spec, _, _, layout, role = load_and_plan(str(job), overrides, 5, 4)
    assert spec.topology.replicas == 2 and "replicas = 2\n" in to_toml(spec)  # RUN_DIR/job.toml's count
    assert len(layout.roles) == 5 and role.label == "replica 1/partition 1"
    with pytest.raises(WorldSizeError) as caught:
        load_and_plan(str(job), overrides, 4, 0)
    assert main(["plan", str(job), "--set", overrides[0], "-n", "4"]) == 2
    assert f"error: {caught.value}\n" == capsys.readouterr().err
