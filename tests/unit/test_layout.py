import pytest
from hypothesis import given
from hypothesis import strategies as st

from distbelief_mpi.config import parse_job
from distbelief_mpi.errors import LayoutError
from distbelief_mpi.layout import (
    SHARD_ALIGN,
    Layout,
    assign_roles,
    format_layout,
    layout_problems,
    plan_layout,
    ranks_needed,
    shard_ranges,
)


def spec_with(**topology):
    return parse_job({"data": {"path": "d.h5"}, "run": {"steps": 1}, "topology": topology})


def test_single_replica_layout():
    layout = plan_layout(1, spec_with(), 1000)
    assert [r.role for r in layout.roles] == ["replica"]
    assert layout.roles[0].label == "replica 0/partition 0"
    assert "all (held locally)" in format_layout(layout)


def test_world_size_mismatch_names_both_counts():
    with pytest.raises(LayoutError, match="needs 1 ranks .*got 3"):
        plan_layout(3, spec_with(), 100)


def test_all_problems_at_once():
    problems = layout_problems(6, spec_with(shards=2, replicas=3, coordinator=True), 100)
    text = "\n".join(problems)
    assert "replicas = 1" in text and "shards = 0" in text and "coordinator" in text
    assert "needs 6 ranks (1 coordinator + 2 shards + 3 replicas x 1 partitions)" not in text  # 6 == 6
    assert ranks_needed(spec_with(shards=2, replicas=3, coordinator=True).topology) == 6


def test_rank_order_is_coordinator_shards_then_replica_major():
    topology = spec_with(shards=2, replicas=2, partitions_per_replica=2, coordinator=True).topology
    roles = assign_roles(topology)
    assert [r.world_rank for r in roles] == list(range(7))
    assert [r.label for r in roles] == [
        "coordinator",
        "shard 0",
        "shard 1",
        "replica 0/partition 0",
        "replica 0/partition 1",
        "replica 1/partition 0",
        "replica 1/partition 1",
    ]


def test_table_shows_shard_ranges():
    layout = Layout(3, assign_roles(spec_with(shards=2).topology), shard_ranges(10_000, 2), 10_000)
    assert layout.ranks_of("shard") == [0, 1]
    table = format_layout(layout)
    assert "[0, 4992) = 4992" in table and "[4992, 10000) = 5008" in table


@given(st.integers(0, 10**7), st.integers(1, 64))
def test_shard_ranges_cover_contiguously_and_align(n_params, n_shards):
    ranges = shard_ranges(n_params, n_shards)
    assert len(ranges) == n_shards
    assert ranges[0][0] == 0 and ranges[-1][1] == n_params
    for (a, b), (c, _) in zip(ranges, ranges[1:]):
        assert a <= b == c and b % SHARD_ALIGN == 0
    sizes = [b - a for a, b in ranges]
    if n_params >= SHARD_ALIGN * n_shards:
        assert max(sizes) - min(sizes) <= 2 * SHARD_ALIGN


def test_too_many_shards_for_the_parameters():
    assert any("more than 40 parameters" in p for p in layout_problems(5, spec_with(shards=4), 40))
