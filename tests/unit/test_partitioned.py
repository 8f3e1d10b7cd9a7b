"""Model parallelism without MPI: P partitions run in threads that exchange arrays in memory.
The partitioned forward and backward must equal the unpartitioned network's (float64: to
rounding; float32: within a stated tolerance), and each partition must send exactly the
boundary data the layer geometry says."""

import threading

import numpy as np
import pytest

from distbelief_mpi.model.network import build_network
from distbelief_mpi.model.partition import param_order, plan_partitions
from distbelief_mpi.model.partitioned import PartitionedNetwork
from distbelief_mpi.model.spec import LayerSpec


class ThreadExchanger:
    """An in-memory stand-in for MPI point-to-point between P threads (one per partition)."""

    def __init__(self, parts: int):
        self.parts, self.box, self.cond = parts, {}, threading.Condition()
        self.calls = [0] * parts

    def for_part(self, part: int):
        exchanger = self

        class One:
            def exchange(self, sends, shapes):
                return exchanger.exchange(part, sends, shapes)

        return One()

    def exchange(self, me, sends, shapes):
        seq = self.calls[me]
        self.calls[me] += 1
        with self.cond:
            for dest, array in sends.items():
                self.box[(me, dest, seq)] = array.copy()
            self.cond.notify_all()
            got = {}
            for src, shape in shapes.items():
                self.cond.wait_for(lambda src=src: (src, me, seq) in self.box, timeout=30)
                got[src] = self.box.pop((src, me, seq))
                assert got[src].shape == tuple(shape), (got[src].shape, shape)
        return got


MLP = (LayerSpec("dense", units=13, activation="tanh"), LayerSpec("dense", units=9, activation="relu"))
IMAGE = (
    LayerSpec("local", filters=3, patch=3, stride=1, activation="tanh"),
    LayerSpec("maxpool", size=2, stride=2),
    LayerSpec("lcn", size=3),
    LayerSpec("local", filters=2, patch=2, stride=1, activation="sigmoid"),
    LayerSpec("l2pool", size=2, stride=1),
    LayerSpec("dense", units=7, activation="relu"),
)
STRIDED = (
    LayerSpec("local", filters=2, patch=3, stride=2, activation="relu"),  # 14x6: windows skip rows
    LayerSpec("maxpool", size=3, stride=2),  # 6x2: overlapping windows
    LayerSpec("lcn", size=5),  # halo 4, cropped at borders
    LayerSpec("dense", units=6, activation="tanh"),
)


def run_partitioned(network, parts, params, x, y, plans=None):
    """One step of P partitions in threads: ({p: (loss, correct, bytes sent)}, the canonical
    gradient). plans: plan_partitions' (default: whole rows)."""
    plans = plans or plan_partitions(network, parts)
    order = param_order(network, plans)
    flat = order.from_canonical(params)
    grad_flat = np.zeros_like(flat)
    exchanger, results, errors = ThreadExchanger(parts), {}, []

    def work(p):
        try:
            part = PartitionedNetwork(network, plans, p, exchanger.for_part(p))
            block = slice(order.offsets[p], order.offsets[p + 1])
            loss, correct = part.loss_and_grad(flat[block], x, y, grad_flat[block])
            results[p] = (loss, correct, part.bytes_sent)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in range(parts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(results) == parts and not exchanger.box, exchanger.box.keys()  # every message was received
    return results, order.to_canonical(grad_flat)


@pytest.mark.parametrize(
    "layers,shape", [(MLP, (20,)), (IMAGE, (2, 17, 15)), (STRIDED, (1, 30, 14))], ids=["mlp", "image", "strided"]
)
@pytest.mark.parametrize("parts", [1, 2, 3, 4])
def test_partitioned_step_equals_the_whole_network_in_float64(layers, shape, parts):
    network = build_network(layers, shape, n_classes=5, dtype=np.float64)
    rng = np.random.default_rng(parts)
    params = network.init_params(3)
    x, y = rng.standard_normal((6,) + shape), rng.integers(0, 5, 6)
    grad = np.empty_like(params)
    loss, correct = network.loss_and_grad(params, x, y, grad)
    results, grad_parts = run_partitioned(network, parts, params, x, y)
    for p_loss, p_correct, _ in results.values():
        assert p_loss == pytest.approx(loss, rel=1e-12) and p_correct == correct
    np.testing.assert_allclose(grad_parts, grad, rtol=1e-10, atol=1e-12)


def test_partitioned_step_in_float32_within_tolerance():
    network = build_network(IMAGE, (2, 17, 15), n_classes=5, dtype=np.float32)
    rng = np.random.default_rng(0)
    params = network.init_params(1)
    x, y = rng.standard_normal((8, 2, 17, 15)).astype(np.float32), rng.integers(0, 5, 8)
    grad = np.empty_like(params)
    network.loss_and_grad(params, x, y, grad)
    _, grad_parts = run_partitioned(network, 3, params, x, y)
    np.testing.assert_allclose(grad_parts, grad, rtol=1e-4, atol=1e-6)


def test_each_partition_sends_exactly_the_boundary_data():
    """local 3x3/1 on 1x10x6 (out 3x8x4) -> maxpool 2/2 (out 3x4x2, rows split [0,2), [2,4)) ->
    dense 5 (units split [0,2), [2,5)) -> softmax 4 (classes [0,2), [2,4)), P = 2, float64.
    The local layer reads the whole input batch (no exchange); the pool needs input rows [0,4) and
    [4,8), exactly each partition's own rows of the local layer's output (no halo)."""
    layers = (
        LayerSpec("local", filters=3, patch=3, stride=1, activation="relu"),
        LayerSpec("maxpool", size=2, stride=2),
        LayerSpec("dense", units=5, activation="tanh"),
    )
    network = build_network(layers, (1, 10, 6), n_classes=4, dtype=np.float64)
    batch = 7
    rng = np.random.default_rng(0)
    results, _ = run_partitioned(
        network, 2, network.init_params(0), rng.standard_normal((batch, 1, 10, 6)), rng.integers(0, 4, batch)
    )
    pooled_rows = 2 * 3 * 2  # 2 of the 4 pooled rows x 3 channels x 2 columns, per partition
    own_units, other_units = {0: 2, 1: 3}, {0: 3, 1: 2}
    for p, (_, _, sent) in results.items():
        values = (
            pooled_rows  # forward: own pooled rows to the dense layer of the other
            + pooled_rows  # backward: the other's pooled rows' gradient, back to it
            + own_units[p]  # forward: own dense units to the output layer of the other
            + other_units[p]  # backward: the other's dense units' gradient, back to it
            + 2
        )  # forward: own 2 logits (the loss gradient is computed locally)
        assert sent == batch * 8 * values, (p, sent, batch * 8 * values)


def test_halo_rows_go_only_to_the_neighbour_that_needs_them():
    """local 3x3/1 twice on 1x12x6, P = 3: the second layer's input (10 rows, split 3/3/4) and its
    output (8 rows, split 2/3/3) make it need input rows [0,4), [2,7), [5,10): one halo row from
    each neighbour for the middle partition, 1 for the first, 1 for the last."""
    layers = (
        LayerSpec("local", filters=2, patch=3, stride=1, activation="tanh"),
        LayerSpec("local", filters=2, patch=3, stride=1, activation="tanh"),
    )
    network = build_network(layers, (1, 12, 6), n_classes=3, dtype=np.float64)
    plans = plan_partitions(network, 3)
    assert plans[1].in_split[1] == ((0, 3), (3, 6), (6, 10))
    assert plans[1].need == ((0, 4), (2, 7), (5, 10))
    rng = np.random.default_rng(0)
    results, _ = run_partitioned(
        network, 3, network.init_params(0), rng.standard_normal((5, 1, 12, 6)), rng.integers(0, 3, 5)
    )
    row = 5 * 2 * 4 * 8  # one row of the first layer's output: batch x channels x columns x 8 bytes
    halo = {0: 1, 1: 2, 2: 1}  # rows sent forward: p0 -> p1 row 2; p1 -> p0 row 3, p2 row 5; p2 -> p1 row 6
    # The output layer needs the second layer's whole output (8 rows split 2/3/3, 2 channels x 2
    # columns): own rows to both others forward, the others' rows' gradient back; own logit to both.
    out_row, own_rows = 5 * 2 * 2 * 8, {0: 2, 1: 3, 2: 3}
    for p, (_, _, sent) in results.items():
        gathered = 2 * own_rows[p] * out_row + (8 - own_rows[p]) * out_row
        assert sent == 2 * halo[p] * row + gathered + 2 * 5 * 8, (p, sent)


@pytest.mark.parametrize("parts", [2, 3])
def test_partitioned_evaluation_equals_the_whole_network(parts):
    """Model-parallel inference over a test split, in batches (the last one short)."""
    network = build_network(IMAGE, (2, 17, 15), n_classes=5, dtype=np.float64)
    rng = np.random.default_rng(5)
    params = network.init_params(4)
    x, y = rng.standard_normal((11,) + network.input_shape), rng.integers(0, 5, 11)
    plans = plan_partitions(network, parts)
    order = param_order(network, plans)
    flat, exchanger, results = order.from_canonical(params), ThreadExchanger(parts), {}

    def work(p):
        part = PartitionedNetwork(network, plans, p, exchanger.for_part(p))
        results[p] = part.evaluate(flat[order.offsets[p] : order.offsets[p + 1]], x, y, batch_size=4)

    threads = [threading.Thread(target=work, args=(p,)) for p in range(parts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    expected = network.evaluate(params, x, y, batch_size=4)
    assert len(results) == parts and not exchanger.box
    for loss, accuracy in results.values():
        assert loss == pytest.approx(expected[0], rel=1e-12) and accuracy == expected[1]
