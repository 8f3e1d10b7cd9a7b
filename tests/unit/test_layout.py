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
    group_partitions,
    layout_problems,
    partition_shard_ranges,
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


# -- fewer shards than partitions (S < P), pieces, rank_of -------------------------------------

block_sizes = st.lists(st.integers(1, 5000), min_size=2, max_size=9)


def offsets_of(sizes: list[int]) -> tuple[int, ...]:
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    return tuple(offsets)


def layout_of(offsets: tuple[int, ...], n_shards: int) -> Layout:
    ranges, held = partition_shard_ranges(offsets, n_shards)
    roles = assign_roles(spec_with(shards=n_shards, partitions_per_replica=len(offsets) - 1).topology)
    return Layout(len(roles), roles, ranges, offsets[-1], offsets, held)


@given(block_sizes, st.data())
def test_fewer_shards_than_partitions_hold_whole_contiguous_groups_of_blocks(sizes, data):
    offsets, parts = offsets_of(sizes), len(sizes)
    n_shards = data.draw(st.integers(1, parts - 1))
    layout = layout_of(offsets, n_shards)
    ranges, held = layout.shard_ranges, layout.shard_partitions
    assert len(ranges) == len(held) == n_shards
    assert ranges[0][0] == 0 and ranges[-1][1] == offsets[-1]
    assert all(a < b == c for (a, b), (c, _) in zip(ranges, ranges[1:]))  # contiguous, none empty
    assert [p for group in held for p in group] == list(range(parts))  # every block once, in order
    for (start, stop), group in zip(ranges, held):
        assert group == tuple(range(group[0], group[-1] + 1))
        assert (start, stop) == (offsets[group[0]], offsets[group[-1] + 1])  # cuts on partition boundaries
    for p in range(parts):
        ((shard_id, shard_offset, length, block_offset),) = layout.pieces_of_partition(p)
        assert p in held[shard_id] and layout.shards_of_partition(p) == [shard_id]
        assert (shard_offset, length, block_offset) == (offsets[p] - ranges[shard_id][0], sizes[p], 0)


@given(block_sizes, st.data())
def test_each_partitions_pieces_tile_its_block(sizes, data):
    offsets, parts = offsets_of(sizes), len(sizes)
    n_shards = data.draw(st.integers(1, min(3 * parts, max(1, offsets[-1] // SHARD_ALIGN))))
    layout = layout_of(offsets, n_shards)
    covered = []
    for p in range(parts):
        at = 0
        for piece in layout.pieces_of_partition(p):
            start, stop = layout.shard_ranges[piece.shard_id]
            assert piece.block_offset == at and 0 <= piece.shard_offset <= piece.shard_offset + piece.length
            assert piece.shard_offset + piece.length <= stop - start
            covered.append((start + piece.shard_offset, start + piece.shard_offset + piece.length))
            at += piece.length
        assert at == sizes[p]
    covered.sort()  # the pieces of all partitions tile the whole vector: each parameter on one shard, once
    assert covered[0][0] == 0 and covered[-1][1] == offsets[-1]
    assert all(b == c for (_, b), (c, _) in zip(covered, covered[1:]))


def test_group_cuts_fall_nearest_to_equal_shares():
    assert group_partitions((0, 10, 20, 30, 40), 2) == ((0, 1), (2, 3))
    assert group_partitions((0, 70, 80, 90, 100), 2) == ((0,), (1, 2, 3))  # the big block alone
    assert group_partitions((0, 1, 2, 3, 100), 3) == ((0, 1), (2,), (3,))  # one partition left per group


def test_downpour_and_sandblaster_accept_fewer_shards_than_partitions():
    downpour = parse_job(
        {
            "data": {"path": "d.h5"},
            "run": {"steps": 1},
            "optimizer": {"algorithm": "downpour"},
            "topology": {"shards": 1, "replicas": 2, "partitions_per_replica": 2},
        }
    )
    layout = plan_layout(5, downpour, 100, (0, 40, 100))
    assert layout.shard_ranges == ((0, 100),) and layout.shard_partitions == ((0, 1),)
    assert "(partitions 0-1)" in format_layout(layout)
    sandblaster = parse_job(
        {
            "data": {"path": "d.h5"},
            "run": {"steps": 1},
            "optimizer": {"algorithm": "sandblaster"},
            "topology": {"shards": 2, "replicas": 1, "partitions_per_replica": 3, "coordinator": True},
        }
    )
    assert layout_problems(6, sandblaster, 300) == []


def scanned_rank_of(layout: Layout, replica_id: int, partition_id: int) -> int:
    """The old rank_of: a scan over every role."""
    return next(
        r.world_rank
        for r in layout.roles
        if r.role == "replica" and (r.replica_id, r.partition_id) == (replica_id, partition_id)
    )


@pytest.mark.parametrize("coordinator", [False, True])
@pytest.mark.parametrize("shards", [0, 1, 3])
@pytest.mark.parametrize("replicas, parts", [(1, 1), (3, 1), (2, 2), (4, 3)])
def test_rank_of_by_arithmetic_equals_the_scan(coordinator, shards, replicas, parts):
    topology = spec_with(shards=shards, replicas=replicas, partitions_per_replica=parts, coordinator=coordinator)
    roles = assign_roles(topology.topology)
    layout = Layout(len(roles), roles, shard_ranges(1000, shards), 1000)
    for replica_id in range(replicas):
        for partition_id in range(parts):
            assert layout.rank_of(replica_id, partition_id) == scanned_rank_of(layout, replica_id, partition_id)
    with pytest.raises(ValueError):
        layout.rank_of(replicas, 0)
    with pytest.raises(ValueError):
        layout.rank_of(0, parts)
