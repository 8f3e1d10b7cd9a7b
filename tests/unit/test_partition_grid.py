"""2-D partitions (topology.partition_grid = "AxB"), without MPI: partitions in threads
(test_partitioned.ThreadExchanger). The partitioned step equals the whole network for blocks of
rows x columns, the halo each partition sends is exactly the geometry's (checked against a
brute-force count of the input pixels each output pixel's window touches, their bounding box per
partition, and by hand for a 2 x 2 grid with its corners), and the parameter order stays a
permutation."""

import threading

import numpy as np
import pytest

from distbelief_mpi.cli import main as cli_main
from distbelief_mpi.config import parse_job
from distbelief_mpi.errors import ConfigError, LayoutError
from distbelief_mpi.model.network import build_network
from distbelief_mpi.model.partition import (
    initial_slice,
    job_grid,
    param_order,
    partition_offsets,
    plan_partitions,
    split_model,
)
from distbelief_mpi.model.partition_geometry import choose_grid, grid_rects
from distbelief_mpi.model.partitioned import PartitionedNetwork
from distbelief_mpi.model.spec import LayerSpec
from tests.unit.test_partitioned import IMAGE, ThreadExchanger, run_partitioned

# the strided net of test_partitioned on a wider input: 12 then 5 columns, enough for 3 column bands
STRIDED = (
    LayerSpec("local", filters=2, patch=3, stride=2, activation="relu"),
    LayerSpec("maxpool", size=3, stride=2),
    LayerSpec("lcn", size=5),
    LayerSpec("dense", units=6, activation="tanh"),
)
NETS = [(IMAGE, (2, 17, 15)), (STRIDED, (1, 30, 26))]
GRIDS = [(1, 2), (2, 2), (3, 2), (2, 3)]


def run_grid(network, grid, params, x, y):
    """run_partitioned with image layers in the blocks of `grid`."""
    parts = grid[0] * grid[1]
    plans = plan_partitions(network, parts, grid)
    return run_partitioned(network, parts, params, x, y, plans=plans)


@pytest.mark.parametrize("layers,shape", NETS, ids=["image", "strided"])
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_blocks_step_equals_the_whole_network_in_float64(layers, shape, grid):
    network = build_network(layers, shape, n_classes=6, dtype=np.float64)
    rng = np.random.default_rng(grid[0] * 10 + grid[1])
    params = network.init_params(3)
    x, y = rng.standard_normal((6,) + shape), rng.integers(0, 6, 6)
    grad = np.empty_like(params)
    loss, correct = network.loss_and_grad(params, x, y, grad)
    results, grad_parts = run_grid(network, grid, params, x, y)
    for p_loss, p_correct, _ in results.values():
        assert p_loss == pytest.approx(loss, rel=1e-12) and p_correct == correct
    np.testing.assert_allclose(grad_parts, grad, rtol=1e-10, atol=1e-12)
    plans = plan_partitions(network, grid[0] * grid[1], grid)
    assert plans[0].out_split[0] == "blocks"  # really 2-D: every image layer split in columns too
    assert all(len({r[2:] for r in plan.out_split[1]}) == grid[1] for plan in plans if plan.kind == "image")


def test_blocks_evaluation_equals_the_whole_network():
    network = build_network(IMAGE, (2, 17, 15), n_classes=6, dtype=np.float64)
    rng = np.random.default_rng(5)
    params, grid = network.init_params(4), (2, 2)
    x, y = rng.standard_normal((11,) + network.input_shape), rng.integers(0, 6, 11)
    plans, order = split_model(network, 4, grid)
    flat, exchanger, results = order.from_canonical(params), ThreadExchanger(4), {}

    def work(p):
        part = PartitionedNetwork(network, plans, p, exchanger.for_part(p))
        results[p] = part.evaluate(flat[order.offsets[p] : order.offsets[p + 1]], x, y, batch_size=4)

    threads = [threading.Thread(target=work, args=(p,)) for p in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    expected = network.evaluate(params, x, y, batch_size=4)
    assert len(results) == 4 and not exchanger.box
    for loss, accuracy in results.values():
        assert loss == pytest.approx(expected[0], rel=1e-12) and accuracy == expected[1]


# -- bytes: the geometry, counted independently -------------------------------------------------
def reach(layer, i: int, j: int) -> set[tuple[int, int]]:
    """Input pixels output pixel (i, j) of an image layer depends on, by brute force: a window's
    pixels, or for LCN every pixel within 2 * (size // 2) (its mean and its variance each reach
    size // 2), cropped to the map."""
    _, h, w = layer.in_shape
    if layer.kind == "lcn":
        k = 2 * (layer.size // 2)
        return {
            (a, b) for a in range(max(0, i - k), min(h, i + k + 1)) for b in range(max(0, j - k), min(w, j + k + 1))
        }
    window = layer.patch if layer.kind == "local" else layer.size
    s = layer.stride
    return {(i * s + a, j * s + b) for a in range(window) for b in range(window)}


def bounding_box(pixels: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Every pixel of the smallest rectangle holding `pixels`: a partition reads one block (with
    pools of stride > size, the rows and columns between windows that no window reads come along)."""
    rows, cols = [a for a, _ in pixels], [b for _, b in pixels]
    return {(a, b) for a in range(min(rows), max(rows) + 1) for b in range(min(cols), max(cols) + 1)}


def owner_map(height: int, width: int, grid) -> np.ndarray:
    """(height, width): the partition owning each pixel (its rows band x its columns band)."""
    rows = np.searchsorted(np.array([height * k // grid[0] for k in range(1, grid[0])]), np.arange(height), "right")
    cols = np.searchsorted(np.array([width * k // grid[1] for k in range(1, grid[1])]), np.arange(width), "right")
    return rows[:, None] * grid[1] + cols[None, :]


def expected_bytes(network, grid, batch: int, itemsize: int) -> list[int]:
    """Bytes each partition sends in one step, from pixel sets: per image layer after the first,
    forward the pixels it owns in another partition's input block (the bounding box of the pixels
    its windows reach), once per destination, and backward the gradient of the pixels of its own
    input block that another owns; dense inputs gathered (own
    piece to every other partition, the others' pieces' gradients back); its logits to every other."""
    parts, sent = grid[0] * grid[1], [0] * (grid[0] * grid[1])
    layers = network.layers
    for index, layer in enumerate(layers):
        if index == 0:
            continue
        prev = layers[index - 1]
        if layer.kind != "dense" and len(layer.out_shape) == 3:
            owner = owner_map(prev.out_shape[1], prev.out_shape[2], grid)
            out_owner = owner_map(layer.out_shape[1], layer.out_shape[2], grid)
            reached = [set() for _ in range(parts)]
            for i in range(layer.out_shape[1]):
                for j in range(layer.out_shape[2]):
                    reached[out_owner[i, j]] |= reach(layer, i, j)
            needs = [bounding_box(pixels) for pixels in reached]
            for p in range(parts):
                for q in range(parts):
                    if q != p:
                        forward = sum(owner[a, b] == p for a, b in needs[q])  # p's pixels q reads
                        backward = sum(owner[a, b] == q for a, b in needs[p])  # q's pixels p read
                        sent[p] += (forward + backward) * prev.out_shape[0]
        else:
            if len(prev.out_shape) == 3:
                owner = owner_map(prev.out_shape[1], prev.out_shape[2], grid).ravel()
                pieces = [int((owner == p).sum()) * prev.out_shape[0] for p in range(parts)]
            else:
                pieces = [
                    len(range(prev.out_shape[0] * p // parts, prev.out_shape[0] * (p + 1) // parts))
                    for p in range(parts)
                ]
            total = sum(pieces)
            for p in range(parts):
                sent[p] += pieces[p] * (parts - 1) + (total - pieces[p])
    classes = network.n_classes
    for p in range(parts):
        sent[p] += (classes * (p + 1) // parts - classes * p // parts) * (parts - 1)
    return [s * batch * itemsize for s in sent]


@pytest.mark.parametrize("layers,shape", NETS, ids=["image", "strided"])
@pytest.mark.parametrize("grid", GRIDS + [(4, 1)], ids=lambda g: f"{g[0]}x{g[1]}")
def test_each_partition_sends_exactly_the_geometrys_bytes(layers, shape, grid):
    network = build_network(layers, shape, n_classes=6, dtype=np.float64)
    rng = np.random.default_rng(1)
    results, _ = run_grid(
        network, grid, network.init_params(0), rng.standard_normal((3,) + shape), rng.integers(0, 6, 3)
    )
    assert [results[p][2] for p in range(grid[0] * grid[1])] == expected_bytes(network, grid, 3, 8)


def test_a_2x2_halo_goes_to_the_side_and_corner_neighbours():
    """local 3x3/1 twice on 1x10x10 in a 2 x 2 grid: the first layer's output (2 x 8 x 8) is 4 x 4
        blocks; the second's (2 x 6 x 6) is 3 x 3 blocks, whose 3x3 windows reach 5 x 5 input pixels.
        Partition 0 (rows 0-2, columns 0-2) reads input rows 0-4 x columns 0-4: its own 4 x 4, 4 pixels
        of partition 1 (column 4), 4 of partition 2 (row 4) and 1 of partition 3 (the corner (4, 4));
        by symmetry every partition receives 9 pixels x 2 channels and sends as many, and returns
        their gradient. Then the output layer gathers the second layer's output (own 3 x 3 block x 2
    channels to 3 others; the others' 3 blocks' gradients back)."""
    layers = (
        LayerSpec("local", filters=2, patch=3, stride=1, activation="tanh"),
        LayerSpec("local", filters=2, patch=3, stride=1, activation="tanh"),
    )
    network = build_network(layers, (1, 10, 10), n_classes=4, dtype=np.float64)
    plans = plan_partitions(network, 4, (2, 2))
    assert plans[1].in_split == ("blocks", ((0, 4, 0, 4), (0, 4, 4, 8), (4, 8, 0, 4), (4, 8, 4, 8)))
    assert [plans[1].need_rect(p) for p in range(4)] == [(0, 5, 0, 5), (0, 5, 3, 8), (3, 8, 0, 5), (3, 8, 3, 8)]
    rng = np.random.default_rng(0)
    batch = 5
    results, _ = run_grid(
        network, (2, 2), network.init_params(0), rng.standard_normal((batch, 1, 10, 10)), rng.integers(0, 4, batch)
    )
    halo = 2 * 9 * 2  # forward and backward, 9 pixels x 2 channels
    gather = 3 * 9 * 2 + 3 * 9 * 2  # second layer's own 3x3 block x 2 channels to 3 others; 3 others' back
    logits = 3 * 1  # one class of 4 to each of 3 others
    for p in range(4):
        assert results[p][2] == batch * 8 * (halo + gather + logits), p


# -- the parameter order and the job's grid ----------------------------------------------------
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_block_order_is_a_permutation_and_initial_slices_agree(grid):
    network = build_network(IMAGE, (2, 17, 15), n_classes=6)
    parts = grid[0] * grid[1]
    order = param_order(network, plan_partitions(network, parts, grid))
    index = np.arange(network.n_params, dtype=np.float64)
    moved = order.from_canonical(index)
    assert np.array_equal(np.sort(moved), index) and np.array_equal(order.to_canonical(moved), index)
    assert order.offsets[-1] == network.n_params
    initial = order.from_canonical(network.init_params(7))
    for start, stop in ((0, 100), (37, order.offsets[1] + 5), (network.n_params - 50, network.n_params)):
        np.testing.assert_array_equal(initial_slice(network, parts, 7, start, stop, grid), initial[start:stop])


def spec_with(grid: str, parts: int = 4):
    return parse_job(
        {
            "data": {"path": "d.h5"},
            "run": {"steps": 1},
            "topology": {"partitions_per_replica": parts, "partition_grid": grid},
        }
    )


@pytest.mark.parametrize("bad", ["3x", "x2", "2x2x1", "0x4", "4*1", "columns", "2x3", "1x-4"])
def test_bad_grids_are_named_by_their_key(bad):
    with pytest.raises(ConfigError) as info:
        spec_with(bad)
    assert any(p.startswith("topology.partition_grid:") and repr(bad) in p for p in info.value.problems)


def test_a_bad_grid_exits_2_naming_the_key(tmp_path, capsys):
    job = tmp_path / "j.toml"
    job.write_text(
        f'[data]\npath = "{tmp_path / "none.h5"}"\n[run]\nsteps = 1\n[topology]\npartitions_per_replica = 4\n'
        'partition_grid = "3x2"\n'
    )
    assert cli_main(["plan", str(job), "-n", "4"]) == 2
    assert "topology.partition_grid" in capsys.readouterr().err


def test_the_jobs_grid_rows_auto_and_explicit():
    square = build_network(IMAGE, (2, 17, 17), n_classes=6)
    assert job_grid(square, spec_with("rows").topology) == (4, 1)
    assert job_grid(square, spec_with("1x4").topology) == (1, 4)
    assert job_grid(square, spec_with("auto").topology) == (2, 2)  # least halo on a square map
    assert job_grid(square, spec_with("auto", 2).topology) == (2, 1)  # a tie: rows-only
    mlp = build_network((LayerSpec("dense", units=8, activation="relu"),), (6,), n_classes=4)
    assert choose_grid(mlp, 4) == (4, 1)
    # no halo at all (one image layer, reading the input itself): the most even blocks, 3 x 3 each
    # rather than 1 or 2 whole rows of 6
    one_local = build_network(
        (LayerSpec("local", filters=2, patch=3, stride=1, activation="relu"),), (1, 8, 8), n_classes=4
    )
    assert choose_grid(one_local, 4) == (2, 2) and choose_grid(one_local, 2) == (2, 1)
    # rows-only through the job spec is exactly the default plan
    assert partition_offsets(square, spec_with("rows")) == split_model(square, 4)[1].offsets


def test_a_grid_too_fine_for_a_layer_is_refused_naming_the_setting():
    network = build_network(STRIDED, (1, 30, 14), n_classes=6)  # its pool has 2 output columns
    with pytest.raises(
        LayoutError, match=r"layer 1 \(maxpool\) has 6 x 2 output rows x columns: .*partition_grid = 2x3"
    ):
        plan_partitions(network, 6, (2, 3))
    assert grid_rects(6, 2, (2, 2)) == ((0, 3, 0, 1), (0, 3, 1, 2), (3, 6, 0, 1), (3, 6, 1, 2))


# -- memory plans and checkpoints follow the blocks ---------------------------------------------
def test_memory_plan_uses_the_blocks():
    """input 1x10x10 -> local 2 filters 3x3 (2x8x8) -> 4 classes, 4 partitions, batch 2. In a
    2 x 2 grid partition 0 computes output rows 0-3 x columns 0-3 from input 6 x 6, and holds
    16 positions x (9 weights + 1 bias) x 2 filters + its classes' columns of the output layer."""
    from distbelief_mpi.layout import plan_layout
    from distbelief_mpi.memory import DataSize, predict_memory

    raw = {
        "data": {"path": "absent.h5"},
        "run": {"steps": 1},
        "optimizer": {"algorithm": "downpour", "batch_size": 2},
        "topology": {"shards": 4, "partitions_per_replica": 4, "partition_grid": "2x2"},
        "model": {"layers": [{"type": "local", "filters": 2, "patch": 3}]},
    }
    spec = parse_job(raw)
    network = build_network(spec.model.layers, (1, 10, 10), 4)
    layout = plan_layout(8, spec, network.n_params, partition_offsets(network, spec))
    rows = {row.role: row for row in predict_memory(spec, network, layout, DataSize(10, 3))}
    local_block = 16 * (9 + 1) * 2
    assert layout.block_of_partition(0) == (0, local_block + 128 * 1 + 1)  # 128 inputs x 1 class + its bias
    vectors = {t.name: t.bytes for t in rows["replica partition 0"].terms}["params, grad, accrued"]
    assert vectors == 3 * 4 * (local_block + 129)
    activations = {t.name: t.bytes for t in rows["replica partition 0"].terms}["activations"]
    minibatch = 4 * 100 + 4 + 4 * 4  # input, label, dlogits
    local = 4 * 2 * 16 + 4 * 36  # output block 2x4x4; assembled input 6x6
    output = 4 * 1 + 4 * 128 + 4 * 128  # own class; input gradient; gathered input
    assert activations == 2 * (minibatch + local + output + 4 * 4)  # + the gathered logits


def test_checkpoints_of_blocks_resume_only_with_the_same_grid():
    from distbelief_mpi.checkpoint.resume import layout_signature
    from distbelief_mpi.layout import plan_layout

    def signature(grid: str) -> dict:
        spec = parse_job(
            {
                "data": {"path": "d.h5"},
                "run": {"steps": 1},
                "optimizer": {"algorithm": "downpour"},
                "topology": {"shards": 1, "partitions_per_replica": 4, "partition_grid": grid},
            }
        )
        return layout_signature(spec, plan_layout(5, spec, 1000, ()))

    assert "partition_grid" not in signature("rows") and signature("rows") == signature("4x1")  # as before
    assert signature("2x2")["partition_grid"] == "2x2" and signature("auto")["partition_grid"] == "auto"


def test_plan_prints_the_grid_auto_chose(tmp_path, capsys):
    job = tmp_path / "j.toml"
    job.write_text(
        f'[data]\npath = "{tmp_path / "none.h5"}"\n[run]\nsteps = 1\n[optimizer]\nalgorithm = "downpour"\n'
        '[topology]\nshards = 1\npartitions_per_replica = 4\npartition_grid = "auto"\n'
        '[model]\nlayers = [{type = "local", filters = 2, patch = 3}, {type = "maxpool", size = 2}]\n'
    )
    assert cli_main(["plan", str(job), "-n", "5", "--input-shape", "1,19,19", "--classes", "4"]) == 0
    # local output 17 x 17, pooled 8 x 8: no halo in rows or blocks (the pool's windows meet the
    # local layer's cuts), so the most even blocks win: 9 x 9 at most, against bands of 5 x 17
    out = capsys.readouterr().out
    assert "partition grid: 2x2 (image layers in blocks of rows x columns; topology.partition_grid = 'auto')" in out


@pytest.mark.parametrize("grid", [(4, 1), (2, 2), (1, 4)], ids=lambda g: f"{g[0]}x{g[1]}")
def test_a_block_whose_input_lies_wholly_with_its_neighbours(grid):
    """local 3x3 on 1x18x18 (16 x 16) then maxpool 2 / stride 3 (5 x 5): in 4 bands of rows,
    partition 2 pools row 2, reading input rows 6-7, which partition 1 computed; its own rows
    8-11 feed nobody's window but partition 3's. The step still equals the whole network's."""
    layers = (
        LayerSpec("local", filters=2, patch=3, stride=1, activation="tanh"),
        LayerSpec("maxpool", size=2, stride=3),
        LayerSpec("dense", units=5, activation="relu"),
    )
    network = build_network(layers, (1, 18, 18), n_classes=4, dtype=np.float64)
    rng = np.random.default_rng(2)
    params = network.init_params(1)
    x, y = rng.standard_normal((3, 1, 18, 18)), rng.integers(0, 4, 3)
    grad = np.empty_like(params)
    loss, _ = network.loss_and_grad(params, x, y, grad)
    results, grad_parts = run_grid(network, grid, params, x, y)
    assert all(r[0] == pytest.approx(loss, rel=1e-12) for r in results.values())
    np.testing.assert_allclose(grad_parts, grad, rtol=1e-10, atol=1e-12)
    assert [results[p][2] for p in range(4)] == expected_bytes(network, grid, 3, 8)
