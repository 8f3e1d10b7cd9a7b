"""bench/cost_model.py without MPI: its byte counts equal what PartitionedNetwork really sends
(in-process threads), its plan equals plan_partitions', and the step-time equation behaves:
speed-up 1 at P = 1, linear with free communication on a balanced net, latency and bandwidth
terms linear in their inputs."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from distbelief_mpi.model.network import build_network
from distbelief_mpi.model.partition import plan_partitions
from distbelief_mpi.model.spec import LayerSpec
from tests.unit.test_partitioned import IMAGE, MLP, STRIDED, run_partitioned

sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))
import cost_model as cm  # noqa: E402

NETS = [(MLP, (20,)), (IMAGE, (2, 17, 15)), (STRIDED, (1, 30, 14))]
FREE = cm.Machine(1, float("inf"), 0.0)  # free communication, one core per partition machine


@pytest.mark.parametrize("layers,shape", NETS, ids=["mlp", "image", "strided"])
@pytest.mark.parametrize("parts", [1, 2, 3, 4])
def test_bytes_equal_what_partitioned_network_sends(layers, shape, parts):
    network = build_network(layers, shape, n_classes=5, dtype=np.float64)
    rng = np.random.default_rng(parts)
    results, _ = run_partitioned(
        network, parts, network.init_params(0), rng.standard_normal((6,) + shape), rng.integers(0, 5, 6)
    )
    sent = [results[p][2] for p in range(parts)]
    assert cm.bytes_per_partition(network, parts, 6).tolist() == sent


@pytest.mark.parametrize("layers,shape", NETS, ids=["mlp", "image", "strided"])
def test_geometry_equals_plan_partitions(layers, shape):
    network = build_network(layers, shape, n_classes=5)
    for parts in (1, 2, 3, 4):
        for mine, theirs in zip(cm.plan_geometry(network, parts), plan_partitions(network, parts)):
            assert mine["in_split"] == theirs.in_split
            assert [tuple(b) for b in mine["out"]] == list(theirs.out_split[1])
            assert [tuple(n) for n in mine["need"]] == list(theirs.need)


def test_geometry_refuses_more_partitions_than_rows_and_never_allocates_parameters():
    _, image, _ = cm.paper_networks()
    assert image.n_params > 1.7e9
    assert cm.bytes_per_partition(image, 128, 32).shape == (128,)
    with pytest.raises(ValueError):
        cm.plan_geometry(image, 168)


def balanced():
    """Every layer's units divisible by 8: equal shares at P = 1, 2, 4, 8."""
    layers = (LayerSpec("dense", units=64, activation="relu"), LayerSpec("dense", units=32, activation="relu"))
    return build_network(layers, (40,), n_classes=16)


def test_speed_up_is_one_at_one_partition_and_linear_with_free_communication():
    network, seconds = balanced(), [0.3, 0.2, 0.1]
    slow = cm.Machine(4, 1e6, 1e-3, compute_scale=2.0, parallel_efficiency=0.5)
    assert cm.partition_step(network, 1, 32, seconds, slow, 0.05) == pytest.approx(0.65 * 2.0 / 2.5)
    for parts in (1, 2, 4, 8):
        assert cm.partition_step(network, parts, 32, seconds, FREE) == pytest.approx(0.6 / parts)


def test_communication_makes_speed_up_sublinear_and_time_positive():
    network, seconds = balanced(), [0.03, 0.02, 0.01]
    ethernet = cm.Machine(1, 125e6, 100e-6)
    times = [cm.partition_step(network, p, 32, seconds, ethernet) for p in (1, 2, 4, 8)]
    assert all(t > 0 for t in times)
    assert all(times[0] / t < p for t, p in zip(times[1:], (2, 4, 8)))


def test_latency_term_counts_messages_and_bandwidth_term_scales_with_bytes():
    network, seconds, parts, batch = balanced(), [0.0, 0.0, 0.0], 4, 32
    latency = cm.Machine(1, float("inf"), 1e-4)
    # 5 exchanges (dense 2 and output: forward gather + backward return each, logits): P - 1 messages each
    assert cm.partition_step(network, parts, batch, seconds, latency) == pytest.approx(5 * (parts - 1) * 1e-4)
    t1 = cm.partition_step(network, parts, batch, seconds, cm.Machine(1, 1e8, 0.0))
    t2 = cm.partition_step(network, parts, batch, seconds, cm.Machine(1, 5e7, 0.0))
    assert t2 == pytest.approx(2 * t1)
    # each gather: a partition receives the 3/4 of the (B, units) activation others hold, 4 bytes each
    received = batch * 4 * (3 / 4) * (64 + 64 + 32 + 32 + 16)
    assert t1 == pytest.approx(received / 1e8)


def test_ranks_beyond_the_cores_time_share():
    network, seconds = balanced(), [0.4, 0.2, 0.2]
    node = cm.Machine(2, float("inf"), 0.0, partition_per_machine=False)
    assert cm.partition_step(network, 2, 8, seconds, node) == pytest.approx(0.4)
    assert cm.partition_step(network, 4, 8, seconds, node) == pytest.approx(0.4)  # 0.2 of work, 2x slower


def test_layer_costs_measure_every_layer():
    network = build_network(IMAGE, (2, 17, 15), n_classes=5)
    costs = cm.layer_costs(network, 4, repeats=1)
    assert [c.kind for c in costs] == [layer.kind for layer in network.layers]
    assert all(c.seconds > 0 and c.flops > 0 for c in costs)
    assert cm.loss_seconds(network, 4, repeats=1) > 0


def test_measured_results_load_from_a_json_list_or_result_lines(tmp_path):
    result = {"model": "local", "parts": 2, "batch": 4, "step_s": 0.01, "bytes_sent": [1, 2]}
    (tmp_path / "list.json").write_text(f"[{json.dumps(result)}]")
    (tmp_path / "lines.txt").write_text(f"noise\nMODEL_PARALLEL_JSON {json.dumps(result)}\n")
    assert cm.load_measured(tmp_path / "list.json") == cm.load_measured(tmp_path / "lines.txt") == [result]


def test_partitions_on_hosts_use_the_link_between_them_and_share_each_hosts_link():
    sent = np.full((4, 4), 1e6)
    np.fill_diagonal(sent, 0)
    one_host = cm.Machine(2, 1e10, 1e-6, partition_per_machine=False)
    assert cm.exchange_seconds(sent, cm.replace(one_host, hosts=(0, 0, 0, 0))) == cm.exchange_seconds(sent, one_host)
    two = cm.replace(one_host, hosts=(0, 1), net_bandwidth_bytes_per_s=1e8, net_latency_s=1e-4)
    assert cm.exchange_seconds(sent[:2, :2], two) == pytest.approx(1e6 / 1e8 + 1e-4)  # all over the network
    # 2 + 2: a partition sends 1 MB within its host and 2 MB across; its host's link carries 4 MB each way
    four = cm.replace(two, hosts=(0, 0, 1, 1))
    assert cm.exchange_seconds(sent, four) == pytest.approx(1e-4 + 4e6 / 1e8)
    slow_latency = cm.replace(four, net_latency_s=0.1)
    assert cm.exchange_seconds(sent, slow_latency) == pytest.approx(1e6 / 1e10 + 1e-6 + 2e6 / 1e8 + 2 * 0.1)
    with pytest.raises(ValueError):
        cm.exchange_seconds(sent, two)


def test_a_measured_curve_prices_each_message_at_its_size():
    curve = ((1024, 20e-6), (256 << 10, 200e-6), (1 << 20, 6.3e-3), (4 << 20, 31.5e-3))  # a 256 KB burst
    assert cm.message_seconds(10, 1.0, 1.0, curve) == pytest.approx(20e-6)
    assert cm.message_seconds(128 << 10, 1.0, 1.0, curve) == pytest.approx(20e-6 + 180e-6 * (127 / 255))
    assert cm.message_seconds(8 << 20, 1.0, 1.0, curve) == pytest.approx(31.5e-3 + 4 * 25.2e-3 / 3)
    assert cm.message_seconds(1e6, 1e-5, 1e8) == pytest.approx(1e-5 + 1e-2)
    sent = np.array([[0, 128 << 10], [128 << 10, 0]], float)
    shaped = cm.Machine(2, 1e10, 1e-6, hosts=(0, 1), net_bandwidth_bytes_per_s=1.25e8, net_latency_s=20e-6)
    assert cm.exchange_seconds(sent, shaped) == pytest.approx(20e-6 + (128 << 10) / 1.25e8)
    burst = cm.replace(shaped, net_curve=curve)
    assert cm.exchange_seconds(sent, burst) == pytest.approx(cm.message_seconds(128 << 10, 0, 1, curve))


GRIDS = [(1, 2), (2, 2), (3, 2), (2, 3)]


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_block_bytes_and_geometry_equal_the_planners(grid):
    """With image layers in A x B blocks: the planner's blocks, and the bytes PartitionedNetwork sends."""
    from tests.unit.test_partition_grid import NETS as GRID_NETS
    from tests.unit.test_partition_grid import run_grid

    parts = grid[0] * grid[1]
    for layers, shape in GRID_NETS:
        network = build_network(layers, shape, n_classes=6, dtype=np.float64)
        for mine, theirs in zip(cm.plan_geometry(network, parts, grid), plan_partitions(network, parts, grid)):
            assert mine["in_split"] == theirs.in_split
            assert [tuple(n) for n in mine["need"]] == list(theirs.need)
            if theirs.kind == "image":
                assert [tuple(r) for r in mine["need_rect"]] == [theirs.need_rect(p) for p in range(parts)]
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((4,) + shape), rng.integers(0, 6, 4)
        results, _ = run_grid(network, grid, network.init_params(0), x, y)
        assert cm.bytes_per_partition(network, parts, 4, grid).tolist() == [results[p][2] for p in range(parts)]


def test_the_paper_image_model_in_9x9_blocks_balances_and_sends_less_than_81_bands_of_rows():
    """169-191 output rows of the local layers over 81 partitions: bands of 2 or 3 rows (the
    busiest does 1.27-1.44x the mean); 9 x 9 blocks of 18-22 rows x columns are within 10% of the
    mean, and their halo is a block's perimeter instead of whole rows of 167-200 columns."""
    _, image, _ = cm.paper_networks()
    rows, blocks = cm.plan_geometry(image, 81), cm.plan_geometry(image, 81, (9, 9))
    local = [i for i, plan in enumerate(rows) if plan["layer"].kind == "local"]
    for i in local:
        mean = 1 / 81
        assert cm.shares(rows[i]).max() > 1.25 * mean and cm.shares(blocks[i]).max() < 1.1 * mean
    assert cm.bytes_per_partition(image, 81, 32, (9, 9)).max() < cm.bytes_per_partition(image, 81, 32).max()
    seconds, free = [1.0] * len(image.layers), cm.Machine(1, float("inf"), 0.0)
    assert cm.partition_step(image, 81, 32, seconds, free, grid=(9, 9)) < cm.partition_step(
        image, 81, 32, seconds, free
    )


def test_model_parallel_bench_measures_each_grid_that_fits_and_takes_medians_of_rounds():
    import model_parallel as mp

    assert mp.configurations(["local"], [4], ["rows", "2x2", "3x2"]) == [
        ("local", 1, "rows"),
        ("local", 4, "rows"),
        ("local", 4, "2x2"),
    ]
    rounds = [
        [
            {"model": "m", "parts": 4, "grid": "rows", "step_s": s},
            {"model": "m", "parts": 4, "grid": "2x2", "step_s": t},
        ]
        for s, t in ((0.3, 0.15), (0.1, 0.2), (0.2, 0.3))
    ]
    rows, blocks = mp.median_of_rounds(rounds)
    assert rows["step_s"] == 0.2 and rows["rounds"] == [0.3, 0.1, 0.2] and rows["ratio_to_rows"] is None
    assert blocks["step_s"] == 0.2 and blocks["ratio_to_rows"] == pytest.approx(1.5)  # median of 0.5, 2, 1.5
