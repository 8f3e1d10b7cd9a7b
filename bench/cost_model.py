"""A cost model of model parallelism: time per step of one replica split over P partitions,
from measured per-layer compute times and the exact bytes model/partitioned.py exchanges.

    python bench/cost_model.py [--quick] [--measured FILE] [--out-dir DIR]
    mpiexec -n 2 python bench/cost_model.py --pingpong      # latency / bandwidth here (internal)

Per step (the partitions run layer by layer in lockstep, so every layer waits for its slowest):
  T(P) = sum_l [ max_p share[l,p] * t_l * s / v  +  X(F_l) + X(F_l^T) ]  +  t_loss * s / v  +  X(L)
  t_l    one-thread forward + backward seconds of layer l, whole batch (layer_costs)
  share  partition p's part of layer l: dense units u/U; local its output block (rows x columns,
         the planner's: whole rows, or A x B blocks) / (OH x OW); pools and LCN their extended
         input block (own block + halo) / (H x W)
  s, v   Machine.compute_scale (seconds there per second here); v = partition speed in cores:
         one partition per machine: 1 + (cores - 1) * parallel_efficiency; ranks on one
         machine's cores (1 thread each): 1 / max(1, P / cores) (time-sharing)
  F_l    (P, P) bytes p sends q before layer l: the halo, p's block within q's input block
         (image), or own piece to all (dense);
         the backward returns the input gradients along F_l^T; L = the logits gather
  X(F) = max_p [ max(sent_p, received_p) / bandwidth + max(#sends_p, #receives_p) * latency ]
         partitions on hosts (Machine.hosts): X = max_p max(sum_q t(F[p,q]), sum_q t(F[q,p])), a
         message's time t(n) = latency + n / bandwidth of its link (within a host, or between
         hosts: net_), or that link's measured ping-pong curve at n bytes; and X >= every host's
         network link time t_net(max(bytes out, bytes in)) (one full-duplex link per host)
  t_loss softmax + cross-entropy on the whole (B, n_classes) logits (every partition does it)
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))  # machine.py, model_parallel.py
PINGPONG_PREFIX = "COST_MODEL_PINGPONG "
PAPER_POINTS = {"speech": (8, 2.2), "image": (81, 12.0)}  # (machines, speed-up), paper section 3
# The image model again, its image layers in the A x B blocks partition_grid = "auto" chooses at each
# P (model/partition_geometry.choose_grid: 9 x 9 at 81), instead of whole rows.
BLOCKS = "image 2-D"


@dataclass(frozen=True)
class Machine:
    cores_per_machine: int
    bandwidth_bytes_per_s: float
    latency_s: float
    compute_scale: float = 1.0  # seconds there per one-thread second measured here
    parallel_efficiency: float = 1.0  # each extra core of a partition adds this much of a core
    partition_per_machine: bool = True  # False: partitions are 1-thread ranks on one machine
    # Partitions on hosts: hosts[p] is partition p's host; bandwidth and latency above are then the
    # link within a host (shared memory), these the network between hosts; () = one link kind.
    hosts: tuple[int, ...] = ()
    net_bandwidth_bytes_per_s: float = float("inf")
    net_latency_s: float = 0.0
    # Measured one-way times ((bytes, seconds), ...) of a link's messages (bench/machine.py's
    # pingpong curve); when given, a message costs the curve at its size instead of
    # latency + bytes / bandwidth (a shaper's burst, protocol switches). Hosts only.
    curve: tuple[tuple[float, float], ...] = ()
    net_curve: tuple[tuple[float, float], ...] = ()


def message_seconds(nbytes: float, latency: float, bandwidth: float, curve=()) -> float:
    """One message of `nbytes` over a link: latency + bytes / bandwidth, or the measured curve
    interpolated linearly between its sizes (below the smallest: its time; beyond the largest:
    the last segment's slope, the large-message bandwidth)."""
    if not curve:
        return latency + nbytes / bandwidth
    sizes, times = np.array(curve, float).T
    if nbytes >= sizes[-1] and len(sizes) > 1:
        slope = (times[-1] - times[-2]) / (sizes[-1] - sizes[-2])
        return float(times[-1] + (nbytes - sizes[-1]) * max(slope, 0.0))
    return float(np.interp(nbytes, sizes, times))


@dataclass(frozen=True)
class LayerCost:
    kind: str
    seconds: float  # forward + backward, whole batch, one thread
    flops: float  # the work proxy seconds scale with (see layer_flops)


# ---------------------------------------------------------------- geometry (no parameters allocated)
def plan_geometry(network, parts: int, grid: tuple[int, int] | None = None) -> list[dict]:
    """plan_partitions' blocks (model/partition_geometry.py, the planner's own functions) without
    its sub-layers and index arrays (so 1.7B-parameter networks fit; the tests check both agree):
    per layer {layer, in_split (as plan_partitions': "full" / "rows" / "blocks" / "units"), out
    (P, 2) output rows or units, need (P, 2) input rows (image layers; else empty), and for image
    layers out_rect, need_rect (P, 4): rows x columns}. grid (A, B): image layers in A x B blocks
    (None: (parts, 1), whole rows)."""
    from distbelief_mpi.model.partition_geometry import even_bounds, grid_problems, grid_rects, input_rect

    grid = grid or (parts, 1)
    problems = grid_problems(network, grid, f"{parts} partitions in a {grid[0]}x{grid[1]} grid")
    if problems or grid[0] * grid[1] != parts:
        raise ValueError("; ".join(problems) or f"grid {grid} is not {parts} partitions")
    plans, split = [], ("full", None)
    for layer in network.layers:
        if len(layer.out_shape) == 3:
            rects = np.array(grid_rects(layer.out_shape[1], layer.out_shape[2], grid))
            need = np.array([input_rect(layer, tuple(r)) for r in rects])
            plans.append(
                {
                    "layer": layer,
                    "in_split": split,
                    "out": rects[:, :2],
                    "need": need[:, :2],
                    "out_rect": rects,
                    "need_rect": need,
                }
            )
            blocks = tuple(map(tuple, rects))
            split = ("rows", tuple(r[:2] for r in blocks)) if grid[1] == 1 else ("blocks", blocks)
        else:
            out = np.array(even_bounds(layer.units, parts))
            plans.append({"layer": layer, "in_split": split, "out": out, "need": out[:0]})
            split = ("units", tuple(map(tuple, out)))
    return plans


def _owned(split: tuple, shape: tuple) -> np.ndarray:
    """(P, 4) blocks (rows x columns) of an image activation of shape (C, H, W) split by rows or blocks."""
    kind, bounds = split
    bounds = np.array(bounds)
    return (
        bounds if kind == "blocks" else np.column_stack([bounds, np.zeros(len(bounds)), np.full(len(bounds), shape[2])])
    )


def forward_bytes(plan: dict, batch: int, itemsize: int) -> np.ndarray:
    """F (P, P): bytes partition p sends q before this layer (the backward sends F.T back)."""
    from distbelief_mpi.model.partition_geometry import overlap_areas

    kind, bounds = plan["in_split"]
    parts = len(plan["out"])
    if kind == "full":
        return np.zeros((parts, parts))
    in_shape = plan["layer"].in_shape
    if kind == "units":  # elements of each partition's piece
        own = (np.array(bounds)[:, 1] - np.array(bounds)[:, 0]).astype(float)
    else:
        owned = _owned(plan["in_split"], in_shape)
        own = ((owned[:, 1] - owned[:, 0]) * (owned[:, 3] - owned[:, 2]) * in_shape[0]).astype(float)
    if len(plan["need"]):  # image: the halo, each owned pixel its readers need, once per reader
        sent = overlap_areas(owned, plan["need_rect"]).astype(float) * in_shape[0]
    else:  # dense: own piece to everyone
        sent = np.repeat(own[:, None], parts, axis=1)
    np.fill_diagonal(sent, 0)
    return sent * batch * itemsize


def exchanges(network, plans: list[dict], batch: int) -> list[np.ndarray]:
    """Every (P, P) byte matrix of one step: per layer forward and backward, then the logits
    gather (a dense-style gather of the output layer's units; its gradient stays local)."""
    size, out, last = network.dtype.itemsize, [], plans[-1]
    for plan in plans:
        f = forward_bytes(plan, batch, size)
        out += [f, f.T]
    logits = {**last, "in_split": ("units", tuple(map(tuple, last["out"]))), "need": last["out"][:0]}
    return out + [forward_bytes(logits, batch, size)]


def bytes_per_partition(network, parts: int, batch: int, grid: tuple[int, int] | None = None) -> np.ndarray:
    """(P,) bytes each partition sends per step: PartitionedNetwork.bytes_sent after one step."""
    return sum(m.sum(axis=1) for m in exchanges(network, plan_geometry(network, parts, grid), batch))


def exchange_seconds(sent: np.ndarray, machine: Machine) -> float:
    """X(F): the slowest partition's transfer (full duplex) plus one latency per message; with
    partitions on hosts, see hosts_exchange_seconds."""
    if not sent.any():
        return 0.0
    if machine.hosts:
        return hosts_exchange_seconds(sent, machine)
    volume = np.maximum(sent.sum(axis=1), sent.sum(axis=0)) / machine.bandwidth_bytes_per_s
    messages = np.maximum((sent > 0).sum(axis=1), (sent > 0).sum(axis=0)) * machine.latency_s
    return float((volume + messages).max())


def hosts_exchange_seconds(sent: np.ndarray, machine: Machine) -> float:
    """X(F) with partitions on hosts: a partition's messages go one after another over their
    links (within its host: latency, bandwidth, curve; to another: the net_ ones), sends and
    receives at once (full duplex): max_p max(sum_q t(F[p, q]), sum_q t(F[q, p])). Every host has
    one network link its partitions share: X is at least t_net(max(bytes out, bytes in))."""
    hosts = np.array(machine.hosts)
    if len(hosts) != len(sent):
        raise ValueError(f"{len(sent)} partitions, but hosts for {len(hosts)}")
    local = (machine.latency_s, machine.bandwidth_bytes_per_s, machine.curve)
    net = (machine.net_latency_s, machine.net_bandwidth_bytes_per_s, machine.net_curve)
    seconds = np.zeros_like(sent, dtype=float)
    for p, q in zip(*np.nonzero(sent)):
        seconds[p, q] = message_seconds(sent[p, q], *(local if hosts[p] == hosts[q] else net))
    worst = float(np.maximum(seconds.sum(axis=1), seconds.sum(axis=0)).max())
    for h in np.unique(hosts):
        volume = max(sent[np.ix_(hosts == h, hosts != h)].sum(), sent[np.ix_(hosts != h, hosts == h)].sum())
        if volume:
            worst = max(worst, message_seconds(volume, *net))
    return worst


# ---------------------------------------------------------------- compute
def layer_flops(layer, batch: int, need_dx: bool) -> float:
    """Forward + backward work: multiply-adds x 2 for dense / local (3 products with dx, 2 without);
    window reads for pools; elements x window for LCN (separable box sums)."""
    kind, passes = layer.kind, (2 if need_dx else 1)
    if kind in ("dense", "output"):
        return 2.0 * batch * layer.n_in * layer.units * (passes + 1)
    if kind == "local":
        return 2.0 * batch * layer.n_pos * layer.k * layer.filters * (passes + 1)
    if kind == "lcn":
        return float(batch * np.prod(layer.in_shape) * layer.size * passes)
    return float(batch * np.prod(layer.out_shape) * layer.size**2 * passes)


def _median_seconds(fn, repeats: int) -> float:
    """One warm-up call, then the median of `repeats` timed calls (bench/kernels.py's helper)."""
    from kernels import median_seconds

    return median_seconds(fn, repeats)


def layer_steps(network, batch: int, params=None, layers=None, slices=None) -> list:
    """One callable per layer: its forward + backward at `batch` on random data (the first layer
    computes no input gradient, as in the network's step); then one for the loss (softmax +
    cross-entropy on the (batch, n_classes) logits). layers, slices, params: a partition's
    sub-layers, their blocks and its parameters (PartitionedNetwork.subs, .slices) instead."""
    from distbelief_mpi.kernels import softmax_xent

    rng = np.random.default_rng(0)
    params, steps = network.init_params(0) if params is None else params, []
    layers = network.layers if layers is None else layers
    slices = network.param_slices if slices is None else slices
    for i, (layer, block) in enumerate(zip(layers, slices)):
        x = rng.standard_normal((batch,) + layer.in_shape).astype(network.dtype)
        dy0 = rng.standard_normal((batch,) + layer.out_shape).astype(network.dtype)
        grad = np.empty(layer.n_params, network.dtype)

        def step(layer=layer, block=block, x=x, dy0=dy0, grad=grad, i=i):
            _, cache = layer.forward(params[block], x)
            layer.backward(params[block], cache, dy0.copy(), grad, need_dx=i > 0)

        steps.append(step)
    logits = rng.standard_normal((batch, network.n_classes)).astype(network.dtype)
    labels, dlogits = np.zeros(batch, np.int64), np.empty_like(logits)
    return steps + [lambda: softmax_xent(logits, labels, dlogits, 1.0 / batch)]


def layer_costs(network, batch: int, repeats: int = 3) -> list[LayerCost]:
    """Each layer's forward + backward at `batch` with the current thread count (the CLI sets 1),
    on random data; the first layer computes no input gradient, as in the network's step."""
    steps = layer_steps(network, batch)[:-1]
    return [
        LayerCost(layer.kind, _median_seconds(step, repeats), layer_flops(layer, batch, i > 0))
        for i, (layer, step) in enumerate(zip(network.layers, steps))
    ]


def loss_seconds(network, batch: int, repeats: int = 3) -> float:
    from distbelief_mpi.kernels import softmax_xent

    logits = np.random.default_rng(0).standard_normal((batch, network.n_classes)).astype(network.dtype)
    labels, dlogits = np.zeros(batch, np.int64), np.empty_like(logits)
    return _median_seconds(lambda: softmax_xent(logits, labels, dlogits, 1.0 / batch), repeats)


def shares(plan: dict) -> np.ndarray:
    """(P,) fraction of the layer's work each partition does: dense its units; local its output
    block; pools and LCN their input block (own + halo)."""
    layer, out, need = plan["layer"], plan["out"], plan["need"]
    if not len(need):
        return (out[:, 1] - out[:, 0]) / layer.units
    if layer.kind == "local":
        rects, whole = plan["out_rect"], layer.out_shape[1] * layer.out_shape[2]
    else:
        rects, whole = plan["need_rect"], layer.in_shape[1] * layer.in_shape[2]
    return (rects[:, 1] - rects[:, 0]) * (rects[:, 3] - rects[:, 2]) / whole


def step_parts(
    network, parts: int, batch: int, layer_seconds, machine: Machine, loss_s: float = 0.0, grid=None
) -> dict:
    """Predicted seconds per step of one replica over `parts` partitions (the equation above), as
    {compute, halo (image layers' exchanges), gather (dense layers' inputs and the logits)};
    grid (A, B): image layers in A x B blocks (None: whole rows)."""
    if machine.partition_per_machine:
        speed = 1 + (machine.cores_per_machine - 1) * machine.parallel_efficiency
    else:
        speed = 1 / max(1.0, parts / machine.cores_per_machine)
    plans = plan_geometry(network, parts, grid)
    compute = sum(shares(plan).max() * t for plan, t in zip(plans, layer_seconds)) + loss_s
    out = {"compute": compute * machine.compute_scale / speed, "halo": 0.0, "gather": 0.0}
    matrices = exchanges(network, plans, batch)
    for i, plan in enumerate(plans):
        out["halo" if len(plan["need"]) else "gather"] += sum(
            exchange_seconds(m, machine) for m in matrices[2 * i : 2 * i + 2]
        )
    out["gather"] += exchange_seconds(matrices[-1], machine)
    return out


def partition_step(
    network, parts: int, batch: int, layer_seconds, machine: Machine, loss_s: float = 0.0, grid=None
) -> float:
    """Predicted seconds per step of one replica over `parts` partitions (grid: see step_parts)."""
    return sum(step_parts(network, parts, batch, layer_seconds, machine, loss_s, grid).values())


# ---------------------------------------------------------------- this node's MPI: a ping-pong
def pingpong_worker(repeats: int = 20) -> None:
    from machine import pingpong  # bench/machine.py
    from mpi4py import MPI

    link = pingpong(MPI.COMM_WORLD, 0, 1, repeats=repeats, sizes=(1024, 8 << 20))
    if MPI.COMM_WORLD.Get_rank() == 0:
        print(PINGPONG_PREFIX + json.dumps({k: link[k] for k in ("latency_s", "bandwidth_bytes_per_s")}))


def measure_pingpong() -> dict:
    """One-way latency (1 KB) and bandwidth (8 MB) between 2 ranks here; medians of 20 round trips."""
    from machine import mpi_result  # bench/machine.py

    return mpi_result(2, __file__, ["--pingpong"], PINGPONG_PREFIX, timeout=300)


# ---------------------------------------------------------------- validation against bench/model_parallel.py
def load_measured(path: str) -> list[dict]:
    """A JSON list of model_parallel result dicts, or text with MODEL_PARALLEL_JSON lines."""
    from model_parallel import RESULT_PREFIX

    text = Path(path).read_text()
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        return [json.loads(line[len(RESULT_PREFIX) :]) for line in text.splitlines() if line.startswith(RESULT_PREFIX)]


def validate(measured: list[dict], node: Machine, repeats: int) -> list[dict]:
    """Predicted vs measured step time (and bytes) for every measured configuration."""
    from model_parallel import models

    from distbelief_mpi.model.network import build_network
    from distbelief_mpi.model.spec import parse_grid

    rows, costs = [], {}
    for r in measured:
        shape, classes, _, layers = models()[r["model"]]
        net, key = build_network(layers, shape, classes), (r["model"], r["batch"])
        if key not in costs:
            costs[key] = (
                [c.seconds for c in layer_costs(net, r["batch"], repeats)],
                loss_seconds(net, r["batch"], repeats),
            )
        link = r.get("link")  # measured in the model_parallel run itself, between its ranks 0 and 1
        machine = (
            node
            if link is None
            else replace(node, bandwidth_bytes_per_s=link["bandwidth_bytes_per_s"], latency_s=link["latency_s"])
        )
        grid = parse_grid(r.get("grid", "rows"))  # image layers in A x B blocks, or whole rows
        predicted = partition_step(net, r["parts"], r["batch"], costs[key][0], machine, costs[key][1], grid)
        rows.append(
            {
                "model": r["model"] + (f", {r['grid']} blocks" if grid else ""),
                "parts": r["parts"],
                "batch": r["batch"],
                "measured_s": r["step_s"],
                "predicted_s": predicted,
                "error": predicted / r["step_s"] - 1,
                "bytes_measured": r.get("bytes_sent", []),
                "bytes_predicted": bytes_per_partition(net, r["parts"], r["batch"], grid).tolist(),
                "link": "this run" if link else "node ping-pong",
            }
        )
    return rows


# ---------------------------------------------------------------- the paper's two models on a 2012-like cluster
IMAGE_MODEL = (
    "3x200x200 -> 3 stages of [local 10x10/1 relu (16, 16, 10 filters), L2 pool 3/1, LCN 5] -> "
    "softmax 1000; stride-1 pools keep >= 167 rows in every layer, so rows-only partitioning "
    "reaches 128 partitions"
)


def paper_networks():
    """(speech 440 -> 4 x 2560 sigmoid -> 8192 (42M), image IMAGE_MODEL (1.74B; never allocated),
    a small network of the image model's layer kinds to measure their seconds per flop)."""
    from distbelief_mpi.model.network import build_network
    from distbelief_mpi.model.spec import LayerSpec as L

    def stages(*filters):
        return [
            s
            for f in filters
            for s in (
                L("local", filters=f, patch=10, stride=1, activation="relu"),
                L("l2pool", size=3, stride=1),
                L("lcn", size=5),
            )
        ]

    speech = build_network([L("dense", units=2560, activation="sigmoid")] * 4, (440,), 8192)
    return speech, build_network(stages(16, 16, 10), (3, 200, 200), 1000), build_network(stages(8, 8), (3, 40, 40), 10)


def analytic_seconds(network, batch: int, calibration: list[tuple]) -> list[float]:
    """Per-layer seconds = flops x the measured seconds per flop of that layer kind (calibration:
    (layers, costs) pairs measured with layer_costs)."""
    per_kind = {}
    for layers, costs in calibration:
        for layer, cost in zip(layers, costs):
            s, f = per_kind.get(layer.kind, (0.0, 0.0))
            per_kind[layer.kind] = (s + cost.seconds, f + cost.flops)
    return [
        layer_flops(layer, batch, i > 0) * per_kind[layer.kind][0] / per_kind[layer.kind][1]
        for i, layer in enumerate(network.layers)
    ]


def model_grid(name: str, network, parts: int):
    """The grid a model's curve uses at `parts`: BLOCKS' the planner's "auto" choice, else whole rows."""
    from distbelief_mpi.model.partition_geometry import choose_grid

    return choose_grid(network, parts) if name == BLOCKS else None


def curves(models: dict, cluster: Machine, machines) -> dict:
    """{name: [speed-up T(1)/T(P) for P in machines]}; models: {name: (network, batch, seconds, loss)}."""
    out = {}
    for name, (net, batch, seconds, loss) in models.items():
        base = partition_step(net, 1, batch, seconds, cluster, loss)
        out[name] = [
            base / partition_step(net, p, batch, seconds, cluster, loss, model_grid(name, net, p)) for p in machines
        ]
    return out


def paper_comparison(quick: bool, core_gflops: float, efficiency: float) -> dict:
    speech, image, calib = paper_networks()
    repeats = 2 if quick else 3
    speech_costs = layer_costs(speech, 128, repeats)
    here_gflops = sum(c.flops for c in speech_costs[1:]) / sum(c.seconds for c in speech_costs[1:]) / 1e9
    seconds = analytic_seconds(
        image, 32, [(calib.layers, layer_costs(calib, 32, repeats)), (speech.layers, speech_costs)]
    )
    image_model = (image, 32, seconds, loss_seconds(image, 32, repeats))
    models = {
        "speech": (speech, 128, [c.seconds for c in speech_costs], loss_seconds(speech, 128, repeats)),
        "image": image_model,
        BLOCKS: image_model,
    }
    cluster = Machine(8, 125e6, 100e-6, here_gflops / core_gflops, efficiency)
    machines = list(range(1, 129))
    variants = {
        "as assumed": cluster,
        "cores 4x faster": replace(cluster, compute_scale=cluster.compute_scale / 4),
        "cores 4x slower": replace(cluster, compute_scale=cluster.compute_scale * 4),
        "10 Gbit/s": replace(cluster, bandwidth_bytes_per_s=1.25e9),
        "no latency": replace(cluster, latency_s=0.0),
    }
    at = {**{n: v[0] for n, v in PAPER_POINTS.items()}, BLOCKS: PAPER_POINTS["image"][0]}
    return {
        "cluster": asdict(cluster),
        "here_dense_gflops": here_gflops,
        "machines": machines,
        "n_params": {"speech": speech.n_params, "image": image.n_params},
        "grids": {p: list(model_grid(BLOCKS, image, p)) for p in TABLE_P},
        "bytes_at_81": {  # per partition per step, the busiest: (P,) maxima
            "rows": float(bytes_per_partition(image, 81, 32).max()),
            "blocks": float(bytes_per_partition(image, 81, 32, model_grid(BLOCKS, image, 81)).max()),
        },
        "parts_s": {
            n: {p: step_parts(m[0], p, m[1], m[2], cluster, m[3], model_grid(n, m[0], p)) for p in (1, at[n])}
            for n, m in models.items()
        },
        "curves": curves(models, cluster, machines),
        "variants": {k: curves(models, v, [8, 81]) for k, v in variants.items()},
    }


# ---------------------------------------------------------------- report
TABLE_P = (1, 2, 4, 8, 16, 32, 64, 81, 128)


# ---------------------------------------------------------------- Downpour replicas on one node

DOWNPOUR_EVERY = 4  # bench/scaling.py pushes and fetches every 4 steps
DOWNPOUR_BATCH = 64


def downpour_rows(scaling_path: str, node: Machine, repeats: int) -> list[dict]:
    """Predicted vs measured examples/s of bench/scaling.py (Fashion LC net, 1 shard + R replicas):
    t_replica = t_step + (fetch + push of the whole vector) / bandwidth / every, where t_step is
                the layers, the loss, the local update, the accrual and the minibatch gather
    shard CPU per second = R * t_apply / every / t_replica   (Adagrad over the whole vector)
    examples/s = R * batch / t_replica * min(1, cores / (R + shard CPU))   (time-sharing)"""
    import tomllib

    from distbelief_mpi.config import parse_job
    from distbelief_mpi.kernels.server_rules import adagrad_apply_
    from distbelief_mpi.model.network import build_network

    spec = parse_job(tomllib.loads((REPO / "jobs" / "fashion_lc_partitioned.toml").read_text()))
    network = build_network(spec.model.layers, (1, 28, 28), 10)
    t_step = sum(c.seconds for c in layer_costs(network, DOWNPOUR_BATCH, repeats)) + loss_seconds(
        network, DOWNPOUR_BATCH, repeats
    )
    vec = np.zeros(network.n_params, np.float32)
    t_apply = _median_seconds(lambda: adagrad_apply_(vec.copy(), vec, vec, np.ones_like(vec), 0.05, 1e-8), repeats)
    t_step += replica_overhead(vec, repeats)
    t_transfer = 2 * 4 * network.n_params / node.bandwidth_bytes_per_s + 4 * node.latency_s
    t_replica = t_step + t_transfer / DOWNPOUR_EVERY
    measured = json.loads(Path(scaling_path).read_text())
    rows = []
    for replicas, rates in sorted(measured.items(), key=lambda kv: int(kv[0])):
        r = int(replicas)
        shard_cpu = r * t_apply / DOWNPOUR_EVERY / t_replica
        predicted = r * DOWNPOUR_BATCH / t_replica * min(1.0, node.cores_per_machine / (r + shard_cpu))
        actual = float(np.median(rates))
        rows.append({"replicas": r, "measured": actual, "predicted": predicted, "error": predicted / actual - 1})
    return rows


def replica_overhead(vec: np.ndarray, repeats: int) -> float:
    """Per step, besides the layers: the local update and the accrual over the whole vector
    (n_params,) and gathering the minibatch's rows (64 x 784 float32 from a shuffled split)."""
    from distbelief_mpi.kernels import sgd_update_

    grad, accrued = np.ones_like(vec), np.zeros_like(vec)
    split, rows = np.zeros((60000 // 2, 1, 28, 28), np.float32), np.random.default_rng(0).integers(0, 30000, 64)

    def one_step():
        sgd_update_(vec, grad, np.float32(0.0))
        np.add(accrued, grad, out=accrued)
        split[rows]

    return _median_seconds(one_step, repeats * 20)


def downpour_section(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        "### Validation: Downpour replicas on this node (bench/scaling.py; flag: |error| > 25%)",
        "",
        "| replicas | measured examples/s | predicted | error | |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['replicas']} | {r['measured']:,.0f} | {r['predicted']:,.0f} | {r['error'] * 100:+.1f}% | "
            f"{'**> 25%**' if abs(r['error']) > 0.25 else 'ok'} |"
        )
    return lines + [""]


def report(
    command: str,
    node: Machine,
    pingpong_note: str,
    rows: list[dict],
    paper: dict,
    load: tuple,
    downpour: list[dict] = (),
) -> str:
    from machine import cpu_model  # bench/machine.py

    busy = (
        " **(busy: other processes shared the cores, timings unreliable)**"
        if max(load) > node.cores_per_machine
        else ""
    )
    return "\n".join(
        [
            "## Cost model",
            "",
            f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
            f"- machine: {cpu_model()}, {node.cores_per_machine} usable cores",
            f"- command: `{command}`",
            f"- load average (1 min) at start / end: {load[0]:.1f} / {load[1]:.1f}{busy}",
            f"- this node's MPI (mpiexec -n 2 ping-pong, medians): latency {node.latency_s * 1e6:.1f} us, "
            f"bandwidth {node.bandwidth_bytes_per_s / 1e9:.2f} GB/s{pingpong_note}",
            "",
            "```",
            "Per step" + __doc__.split("Per step", 1)[1].rstrip(),
            "```",
            "",
            "Assumptions: exchanges in one layer run concurrently and links are full duplex (a partition's "
            "transfer time is max(sent, received) / bandwidth); compute and communication do not overlap; "
            "per-layer times are one-thread medians measured in this run; not modelled: the Python copies "
            "around an exchange and the waits caused by run-to-run jitter between partitions.",
            "",
        ]
        + validation_section(rows)
        + downpour_section(downpour)
        + paper_section(paper)
    )


def validation_section(rows: list[dict]) -> list[str]:
    lines = [
        "### Validation on this node (partitions = 1-thread MPI ranks; flag: |error| > 25%)",
        "",
        "Latency and bandwidth: where a model_parallel result carries the ping-pong measured in its own run "
        "(between its ranks 0 and 1, bench/machine.py's `pingpong`), that one; else the node's above.",
        "",
        "| model | batch | P | measured ms | predicted ms | error | MB sent per partition, measured / predicted | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mb = ", ".join(f"{a / 1e6:.3f} / {b / 1e6:.3f}" for a, b in zip(r["bytes_measured"], r["bytes_predicted"]))
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['parts']} | {r['measured_s'] * 1e3:.1f} | "
            f"{r['predicted_s'] * 1e3:.1f} | {r['error'] * 100:+.1f}% | {mb} | "
            f"{'**> 25%**' if abs(r['error']) > 0.25 else 'ok'} |"
        )
    return lines + [""]


def paper_section(paper: dict, figure: str = "cost_model.png") -> list[str]:
    c, curves_ = paper["cluster"], paper["curves"]
    lines = [
        f"### The paper's models on a 2012-like cluster: one partition per machine, {c['cores_per_machine']} cores "
        f"each at parallel efficiency {c['parallel_efficiency']}, {c['bandwidth_bytes_per_s'] * 8 / 1e9:g} Gbit/s, "
        f"{c['latency_s'] * 1e6:g} us latency",
        "",
        f"- a 2012 core does {paper['here_dense_gflops'] / c['compute_scale']:.0f} GFLOP/s on dense GEMMs (assumed); "
        f"ours measured {paper['here_dense_gflops']:.0f} on one thread, so compute_scale = {c['compute_scale']:.2f} "
        "for every layer kind",
        f"- speech: 440 -> 4 x 2560 sigmoid -> 8192 ({paper['n_params']['speech'] / 1e6:.0f}M params), batch 128, "
        "layer times measured",
        f"- image: {IMAGE_MODEL} ({paper['n_params']['image'] / 1e9:.2f}B params), batch 32, layer times = flops x "
        "our measured seconds per flop of each layer kind",
        "",
        "| speed-up at machines | " + " | ".join(map(str, TABLE_P)) + " | paper |",
        "|---" * (len(TABLE_P) + 2) + "|",
    ]
    for name in [*PAPER_POINTS, BLOCKS]:
        at, value = PAPER_POINTS["image" if name == BLOCKS else name]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{curves_[name][p - 1]:.2f}" for p in TABLE_P)
            + f" | {'>' if name != 'speech' else ''}{value:g}x at {at} |"
        )
    peaks = {n: int(np.argmax(curves_[n])) + 1 for n in [*PAPER_POINTS, BLOCKS]}
    grids = paper["grids"]
    lines += [
        "",
        "Peaks: "
        + ", ".join(f"{n} {curves_[n][p - 1]:.2f}x at {p} machines" for n, p in peaks.items())
        + ". `image` splits rows and units whole, so the slowest partition has ceil(n / P) of n rows: its curve "
        "is jagged (167 rows over 81 partitions: 3 rows vs a mean of 2.06). `image 2-D` cuts the image layers "
        'in the A x B blocks partition_grid = "auto" chooses ('
        + ", ".join(f"{p}: {g[0]}x{g[1]}" for p, g in grids.items() if p > 1)
        + f"); at 81 = 9 x 9 the busiest partition sends {paper['bytes_at_81']['blocks'] / 1e6:.1f} MB a step "
        f"against {paper['bytes_at_81']['rows'] / 1e6:.1f} MB in bands of rows.",
        "",
        f"![predicted speed-up vs machines]({figure})",
        "",
        "| predicted seconds per step | machines | compute | halo exchanges | dense-input + logits gathers | total |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {n} | {p} | " + " | ".join(f"{x:.3f}" for x in v.values()) + f" | {sum(v.values()):.3f} |"
        for n, d in paper["parts_s"].items()
        for p, v in d.items()
    ]
    return (
        lines
        + ["", "| sensitivity: speed-up | speech at 8 | image at 81 | image 2-D at 81 (9 x 9) |", "|---|---|---|---|"]
        + [
            f"| {k} | {v['speech'][0]:.2f} | {v['image'][1]:.2f} | {v[BLOCKS][1]:.2f} |"
            for k, v in paper["variants"].items()
        ]
    )


def plot(paper: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for (name, curve), color in zip(paper["curves"].items(), ("C0", "C1", "C2")):
        ax.plot(paper["machines"], curve, color=color, label=f"{name}, predicted")
        if name not in PAPER_POINTS:
            continue
        at, value = PAPER_POINTS[name]
        ax.plot(
            [at],
            [value],
            marker="^" if name == "image" else "o",
            color=color,
            linestyle="none",
            markersize=9,
            label=f"paper: {'>' if name == 'image' else ''}{value:g}x at {at}",
        )
    ax.plot([1, 128], [1, 128], color="grey", linestyle=":", label="linear")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ticks = [2**k for k in range(8)]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_yticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("machines (partitions of one replica)")
    ax.set_ylabel("speed-up over 1 machine")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pingpong", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small batches, fewer repeats")
    parser.add_argument(
        "--measured",
        help="model_parallel results (JSON list or MODEL_PARALLEL_JSON lines); "
        "default: run bench/model_parallel.py's P = 1, 2 now",
    )
    parser.add_argument("--scaling", help="bench/scaling.py's scaling.json: also check the Downpour prediction")
    parser.add_argument("--out-dir", help="write cost_model.md, cost_model.png, cost_model.json here")
    parser.add_argument("--core-gflops-2012", type=float, default=10.0)
    parser.add_argument("--efficiency", type=float, default=0.8, help="parallel efficiency of a machine's cores")
    parser.add_argument(
        "--paper-only",
        action="store_true",
        help="only the paper's models on the 2012-like cluster (no validation runs): cost_model_paper.*",
    )
    args = parser.parse_args()
    if args.pingpong:
        return pingpong_worker()
    from model_parallel import measure

    from distbelief_mpi.kernels import set_compute_threads

    set_compute_threads(1)
    if args.paper_only:
        return paper_only(args)
    load_start = os.getloadavg()[0]
    measured = (
        load_measured(args.measured)
        if args.measured
        else [measure(m, p, 3 if args.quick else 7, args.quick) for m in ("local", "speech") for p in (1, 2)]
    )
    try:
        pp, note = measure_pingpong(), ""
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        pp, note = {"latency_s": 5e-6, "bandwidth_bytes_per_s": 5e9}, f" (ping-pong failed, defaults: {exc})"
    from machine import usable_cores  # bench/machine.py

    node = Machine(usable_cores(), pp["bandwidth_bytes_per_s"], pp["latency_s"], partition_per_machine=False)
    rows = validate(measured, node, 3 if args.quick else 5)
    paper = paper_comparison(args.quick, args.core_gflops_2012, args.efficiency)
    downpour = downpour_rows(args.scaling, node, 3 if args.quick else 5) if args.scaling else []
    text = report(" ".join(["python"] + sys.argv), node, note, rows, paper, (load_start, os.getloadavg()[0]), downpour)
    print(text)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cost_model.md").write_text(text + "\n")
        plot(paper, out / "cost_model.png")
        (out / "cost_model.json").write_text(
            json.dumps({"node": asdict(node), "validation": rows, "paper": paper, "downpour": downpour})
        )


def paper_only(args) -> None:
    """The paper section alone: layer times measured now, on one thread."""
    from machine import cpu_model  # bench/machine.py

    load_start = os.getloadavg()[0]
    paper = paper_comparison(args.quick, args.core_gflops_2012, args.efficiency)
    head = [
        "## Cost model: the paper's models",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; machine: {cpu_model()}",
        f"- command: `{' '.join(['python'] + sys.argv)}`",
        f"- load average (1 min) at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f}",
        "",
    ]
    text = "\n".join(head + paper_section(paper, "cost_model_paper.png"))
    print(text)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cost_model_paper.md").write_text(text + "\n")
        plot(paper, out / "cost_model_paper.png")
        (out / "cost_model_paper.json").write_text(json.dumps({"paper": paper}))


if __name__ == "__main__":
    main()
