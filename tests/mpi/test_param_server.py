"""The parameter server under real mpiexec: properties that hold in any push order."""

import numpy as np
import pytest

from tests.mpi.runner import assert_all_ranks, run_mpi


def records(run, role):
    return [r["data"] for r in run.ranks.values() if r["data"]["role"] == role]


@pytest.mark.parametrize("n_ranks, n_shards, chunk", [(3, 1, 0), (5, 2, 0), (6, 3, 0), (4, 1, 37), (5, 2, 64)], ids=str)
def test_final_parameters_are_initial_minus_the_sum_of_all_pushes(tmp_path, n_ranks, n_shards, chunk):
    """chunk > 0: pushes land in chunks the shards apply as they come (3 replicas racing)."""
    run = run_mpi(n_ranks, ["program", "push_sum", str(n_shards), str(chunk)], tmp_path, timeout=120)
    assert_all_ranks(run, n_ranks)
    shards, replicas = records(run, "shard"), records(run, "replica")
    final = np.concatenate([np.array(s["params"]) for s in sorted(shards, key=lambda s: run_rank(run, s))])
    pushed = np.sum([r["pushed_sum"] for r in replicas], axis=0)
    np.testing.assert_array_equal(final, np.arange(len(final)) - pushed)
    assert sum(sum(s["applied"]) for s in shards) == sum(r["pushes"] for r in replicas)
    assert sum(s["version"] for s in shards) == sum(r["pushes"] for r in replicas)


def run_rank(run, data):
    return next(rank for rank, record in run.ranks.items() if record["data"] is data)


@pytest.mark.parametrize("n_shards", [1, 2])
def test_one_replica_fixed_schedule_equals_single_process_adagrad(tmp_path, digits_h5, n_shards):
    run = run_mpi(n_shards + 1, ["program", "adagrad_reference", str(n_shards), str(digits_h5)], tmp_path)
    assert_all_ranks(run, n_shards + 1)
    (replica,) = records(run, "replica")
    # float32 on both sides, the same operations in the same order: equal to rounding.
    assert replica["max_abs_diff"] <= 1e-6 * max(1.0, replica["max_abs_param"]), replica


def test_non_finite_pushes_are_rejected_and_counted(tmp_path):
    run = run_mpi(3, ["program", "bad_push"], tmp_path)
    assert_all_ranks(run, 3)
    shards = records(run, "shard")
    # Element 5 lies in shard 0's slice: shard 0 rejects 2 of 4 pushes, shard 1 none.
    assert sorted(sum(s["rejected"]) for s in shards) == [0, 2]
    assert sorted(sum(s["applied"]) for s in shards) == [2, 4]
    for shard in shards:
        params = np.array(shard["params"])
        if sum(shard["rejected"]):  # applied: all-ones, then all-ones with a 2 at element 5
            expected = np.full(len(params), -2.0)
            expected[5] = -3.0
        else:  # its slice never held a bad value: all four applied
            expected = np.full(len(params), -4.0)
        np.testing.assert_array_equal(params, expected)


@pytest.mark.parametrize("chunk", [100, 333])
def test_a_push_found_non_finite_half_applied_leaves_parameters_and_accumulators_untouched(tmp_path, chunk):
    """Bad values in the last, a middle and the first chunk of pushes landing in chunks: the
    shard has applied chunks before it finds them, yet ends exactly where Adagrad over the finite
    pushes alone ends (the same float32 operations in the same order)."""
    run = run_mpi(2, ["program", "ps_chunked_reject", str(chunk)], tmp_path)
    assert_all_ranks(run, 2)
    (shard,), (replica,) = records(run, "shard"), records(run, "replica")
    assert sum(shard["rejected"]) == 3 and sum(shard["applied"]) == 3 and shard["version"] == 3
    np.testing.assert_array_equal(shard["params"], replica["expected_params"])
    np.testing.assert_array_equal(shard["accumulator"], replica["expected_accumulator"])


def test_a_half_landed_push_of_a_replica_that_left_is_dropped_without_a_trace(tmp_path):
    run = run_mpi(2, ["program", "ps_dropped_push"], tmp_path)
    assert_all_ranks(run, 2)
    (shard,), (replica,) = records(run, "shard"), records(run, "replica")
    assert shard["after_drop"] == {
        "opened_and_applied_landed": True,
        "reclaimed": 1,
        "version": 0,
        "params_unchanged": True,
        "accumulator_unchanged": True,
        "landed_word": 0,
    }
    assert shard["version"] == 1 and sum(shard["applied"]) == 1  # the next push, applied once
    np.testing.assert_array_equal(shard["params"], replica["expected_params"])
    np.testing.assert_array_equal(shard["accumulator"], replica["expected_accumulator"])


def test_an_idle_shard_sleeps(tmp_path):
    run = run_mpi(2, ["program", "idle_shard"], tmp_path)
    assert_all_ranks(run, 2)
    (shard,) = records(run, "shard")
    assert shard["serve_cpu_fraction"] < 0.10, shard
    print(f"idle shard CPU use: {100 * shard['serve_cpu_fraction']:.1f}% of one core")


def test_bounded_staleness_applies_nothing_staler_than_the_bound(tmp_path):
    run = run_mpi(3, ["program", "stale_pushes"], tmp_path)
    assert_all_ranks(run, 3)
    (shard,) = records(run, "shard")
    hist = shard["staleness_hist"]
    assert max(i for i, count in enumerate(hist) if count) <= 3 and shard["staleness_max"] <= 3
    assert sum(shard["too_stale"]) > 0
    assert sum(shard["applied"]) + sum(shard["too_stale"]) == 2 * 30
    assert np.all(np.array(shard["params"]) == -sum(shard["applied"]))  # each applied push: all ones


@pytest.mark.parametrize("n_shards, landing_slots, chunk", [(1, 1, 0), (2, 2, 0), (1, 2, 50)], ids=str)
def test_replicas_outnumbering_the_slots_lose_and_double_nothing(tmp_path, n_shards, landing_slots, chunk):
    """K < R = 3 replicas: refused pushes keep accruing and go later; every step lands once
    (chunk > 0: pushes land in chunks, one slot open while the other fills)."""
    n_ranks = n_shards + 3
    args = ["program", "ps_few_slots", str(n_shards), str(landing_slots), str(chunk)]
    run = run_mpi(n_ranks, args, tmp_path, timeout=120)
    assert_all_ranks(run, n_ranks)
    shards = sorted(records(run, "shard"), key=lambda s: s["shard_id"])
    replicas = records(run, "replica")
    assert [s["landing_slots"] for s in shards] == [landing_slots] * n_shards
    final = np.concatenate([np.array(s["params"]) for s in shards])
    accrued = np.sum([r["accrued_sum"] for r in replicas], axis=0)
    np.testing.assert_array_equal(final, np.arange(len(final)) - accrued)
    steps_taken = sum(r["steps"] for r in replicas)
    assert [s["steps_pushed"] for s in shards] == [steps_taken] * n_shards
    for shard in shards:  # each push applied on its own (one version each), counted for its replica
        pushed = [r["pushes"][shard["shard_id"]] for r in sorted(replicas, key=lambda r: r["replica_id"])]
        assert shard["applied"] == pushed and shard["version"] == sum(pushed)
    print("pushes deferred (no free slot or own push not yet taken):", [r["deferred"] for r in replicas])


@pytest.mark.parametrize(
    "n_shards, replicas, parts, chunk", [(1, 1, 2, 0), (2, 1, 3, 0), (1, 2, 2, 0), (1, 2, 2, 29)], ids=str
)
def test_fewer_shards_than_partitions_apply_sub_range_pushes(tmp_path, n_shards, replicas, parts, chunk):
    n_ranks = n_shards + replicas * parts
    args = ["program", "ps_subrange", str(n_shards), str(replicas), str(parts), str(chunk)]
    run = run_mpi(n_ranks, args, tmp_path)
    assert_all_ranks(run, n_ranks)
    shards, partitions = records(run, "shard"), records(run, "replica")
    n_params = max(s["range"][1] for s in shards)
    final = np.zeros(n_params)
    for shard in shards:
        final[slice(*shard["range"])] = shard["params"]
    pushed = np.zeros(n_params)
    for partition in partitions:
        pushed[slice(*partition["block"])] += partition["pushed_sum"]
    np.testing.assert_array_equal(final, np.arange(n_params) - pushed)
    assert sum(s["version"] for s in shards) == sum(p["pushes"] for p in partitions)
    if replicas == 1:  # its block's only pusher: a fetch after its pushes are taken sees exactly them
        assert all(p["fetch_error"] == 0 for p in partitions), partitions


@pytest.mark.parametrize("n_shards, n_replicas", [(1, 1), (2, 3)])
def test_pipelined_transfers_lose_and_double_nothing(tmp_path, n_shards, n_replicas):
    """comm/pipelined.py: pushes and fetches spread over steps, against real shards."""
    n_ranks, n_params = n_shards + n_replicas, 1000
    run = run_mpi(n_ranks, ["program", "ps_pipelined", str(n_shards), str(n_params)], tmp_path)
    assert_all_ranks(run, n_ranks)
    check_pipelined(records(run, "shard"), records(run, "replica"), n_params)


def check_pipelined(shards: list[dict], replicas: list[dict], n_params: int) -> None:
    final = np.concatenate([s["params"] for s in sorted(shards, key=lambda s: s["shard_id"])])
    total = np.sum([r["total"] for r in replicas], axis=0)
    np.testing.assert_array_equal(final, np.arange(n_params) - total)
    assert sum(s["steps_pushed"] for s in shards) == len(shards) * sum(r["steps"] for r in replicas)
    assert all(r["pipelined_pushes"] > 0 and r["takes"] > 0 for r in replicas), replicas
