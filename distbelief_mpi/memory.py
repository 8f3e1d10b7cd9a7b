"""PURE: the bytes each rank of a job will hold, by role (`distbelief plan JOB -n N --memory`).

The model is what each role needs once memory shrinks with partitions and shards (issue 12),
term by term; docs/architecture.md ("Memory per rank") gives the formulas. Python's own
overhead, the MPI library and Numba's compiled kernels (some 100-200 MB per rank) come on top.
Nothing here allocates: a 1.7-billion-parameter model is planned on a laptop.
"""

import math
from dataclasses import dataclass

from .checkpoint.params_file import PARAMS_CHUNK
from .data.batches import replica_slice
from .model.network import evaluation_batch, forward_bytes
from .model.partition import job_split
from .optim.portions import default_portion_size
from .optim.vector_ops import WORK_NAMES

F32, F64, I32, I64 = 4, 8, 4, 8
DEFAULT_LANDING_SLOTS = 4  # optimizer.landing_slots' default (for a spec made before that key existed)
PORTION_BYTES = 128  # the coordinator's bookkeeping per portion of a batch (Python tuples and counters)
MAX_PARTITION_ROWS = 4  # more partitions than this: plan shows the largest one only
DOT_BYTES = 100  # one cached dot product on the coordinator (a Python float in a dict)


@dataclass(frozen=True)
class Term:
    """One thing a rank holds: what, its formula with the job's numbers, its bytes (None:
    unknown, e.g. the training split's size when the dataset is absent)."""

    name: str
    formula: str
    bytes: int | None


@dataclass(frozen=True)
class RankMemory:
    role: str  # "coordinator", "shard", "replica", "replica partition p"
    ranks: tuple[int, ...]  # the world ranks this row stands for (the largest of them is shown)
    terms: tuple[Term, ...]

    @property
    def total(self) -> int:
        """The known terms' sum (a lower bound when a term is unknown)."""
        return sum(t.bytes for t in self.terms if t.bytes is not None)

    @property
    def complete(self) -> bool:
        return all(t.bytes is not None for t in self.terms)


@dataclass(frozen=True)
class DataSize:
    """What the memory of data depends on: the splits' sizes (None: the dataset is absent)."""

    n_train: int | None
    n_test: int | None


def predict_memory(spec, network, layout, data: DataSize) -> list[RankMemory]:
    """One row per role (per partition for partitioned replicas), then what replica 0 (the
    evaluator) and the lead (writing params.h5) hold on top of their role."""
    rows = [_coordinator(spec, layout, data)] if layout.ranks_of("coordinator") else []
    rows += _largest_per_role(
        [_shard(spec, layout, s, rank) for s, rank in enumerate(layout.ranks_of("shard"))], "shard"
    )
    parts = spec.topology.partitions_per_replica
    replicas = []
    for partition in range(parts):
        ranks = tuple(r.world_rank for r in layout.roles if r.role == "replica" and r.partition_id == partition)
        label = f"replica partition {partition}" if parts > 1 else "replica"
        replicas.append(RankMemory(label, ranks, _replica_terms(spec, network, layout, partition, data)))
    if parts > MAX_PARTITION_ROWS:  # one row, the largest partition's, for all
        largest = max(replicas, key=lambda row: row.total)
        replicas = _largest_per_role(replicas, f"{largest.role} (the largest of {parts})")
    writer = _params_writer_extra(spec, layout)
    return rows + replicas + [_evaluator_extra(spec, network, layout, data)] + ([writer] if writer else [])


# -- shards and the coordinator -------------------------------------------------------------
def _shard(spec, layout, shard_id: int, rank: int) -> RankMemory:
    start, stop = layout.shard_ranges[shard_id]
    length, slots = stop - start, landing_slots(spec)
    terms = [
        Term(
            "parameter window",
            f"(2 + K) x L x 4 B, K = min(landing_slots, R) = {slots}, L = {length:,}",
            (2 + slots) * length * F32,
        ),
        Term("control window", "(2 + 6 x K) x 8 B", (2 + 6 * slots) * I64),
    ]
    if spec.optimizer.algorithm == "sandblaster":
        memory, work = spec.optimizer.lbfgs_memory, len(WORK_NAMES) + 1
        terms += [
            Term("L-BFGS vectors", f"{work} x L x 8 B ({', '.join(WORK_NAMES)}, scratch)", work * length * F64),
            Term("gradient sum", "L x 8 B", length * F64),
            Term("L-BFGS history", f"2 x (m + 1) x L x 8 B, m = {memory}", 2 * (memory + 1) * length * F64),
        ]
    elif spec.optimizer.server_rule == "adagrad":  # written out of place, like the parameters
        terms.append(Term("Adagrad accumulator", "2 x L x 4 B (this version's and the next's)", 2 * length * F32))
    else:  # allocated whatever the server rule (checkpoints carry it)
        terms.append(Term("Adagrad accumulator", "L x 4 B", length * F32))
    return RankMemory("shard", (rank,), tuple(terms))


def landing_slots(spec) -> int:
    """K: optimizer.landing_slots, at most one per replica (comm/param_server.py)."""
    wanted = getattr(spec.optimizer, "landing_slots", DEFAULT_LANDING_SLOTS)
    return max(1, min(wanted, spec.topology.replicas))


def _largest_per_role(rows: list[RankMemory], role: str) -> list[RankMemory]:
    """One row for all ranks of a role: the terms of its largest rank (shards differ by a few
    cache lines of parameters)."""
    if not rows:
        return []
    largest = max(rows, key=lambda row: row.total)
    return [RankMemory(role, tuple(rank for row in rows for rank in row.ranks), largest.terms)]


def _coordinator(spec, layout, data: DataSize) -> RankMemory:
    """Scalars only (the L-BFGS loop and its dot products) and the list of a batch's portions."""
    memory = spec.optimizer.lbfgs_memory
    batch = _sandblaster_batch(spec, data)
    portions = None if batch is None else math.ceil(batch / _portion_size(spec, batch))
    return RankMemory(
        "coordinator",
        tuple(layout.ranks_of("coordinator")),
        (
            Term(
                "L-BFGS dot products",
                f"2 x (m + 1)^2 cached x {DOT_BYTES} B, m = {memory}",
                2 * (memory + 1) ** 2 * DOT_BYTES,
            ),
            Term(
                "portions of a batch",
                f"{portions if portions is not None else '?'} portions x {PORTION_BYTES} B",
                None if portions is None else portions * PORTION_BYTES,
            ),
        ),
    )


def _sandblaster_batch(spec, data: DataSize) -> int | None:
    return spec.optimizer.sandblaster_batch or data.n_train


def _portion_size(spec, batch: int) -> int:
    """roles/sandblaster/batch_loop.py's choice."""
    return spec.optimizer.portion_examples or default_portion_size(batch, spec.topology.replicas, 8)


# -- replicas --------------------------------------------------------------------------------
def _block(network, layout, partition: int) -> int:
    """B: the parameters of a replica partition (all of them unpartitioned)."""
    offsets = layout.partition_offsets
    return offsets[partition + 1] - offsets[partition] if offsets else network.n_params


def _partition_layers(network, topology, partition: int) -> list:
    """The layers a partition runs (its sub-layers: whole rows or blocks of rows x columns, as
    topology.partition_grid says), or the network's own."""
    if topology.partitions_per_replica == 1:
        return network.layers
    return [plan.sublayers[partition] for plan in job_split(network, topology)[0]]


def _replica_terms(spec, network, layout, partition: int, data: DataSize) -> tuple[Term, ...]:
    block = _block(network, layout, partition)
    algorithm = spec.optimizer.algorithm
    vectors = {
        "sgd": ("params, grad", 2),
        "downpour": ("params, grad, accrued", 3),
        "sandblaster": ("params, grad, result, accrued", 4),
    }[algorithm]
    terms = [Term(vectors[0], f"{vectors[1]} x B x 4 B, B = {block:,}", vectors[1] * block * F32)]
    if algorithm == "downpour" and spec.optimizer.overlap_comm:
        terms.append(Term("transfer buffers", "2 x B x 4 B (overlap_comm: spare, staging)", 2 * block * F32))
    batch = _replica_batch(spec, data)
    if batch is None:
        terms.append(Term("activations", "batch unknown (needs the training split's size)", None))
    else:
        terms.append(_activation_term(network, spec.topology, partition, batch))
    terms.append(_training_data(spec, network, data))
    return tuple(terms)


def _replica_batch(spec, data: DataSize) -> int | None:
    """Examples in one gradient computation: a minibatch, or a Sandblaster portion."""
    if spec.optimizer.algorithm != "sandblaster":
        return spec.optimizer.batch_size
    batch = _sandblaster_batch(spec, data)
    return None if batch is None else min(batch, _portion_size(spec, batch))


def _training_data(spec, network, data: DataSize) -> Term:
    """float32 examples, int32 labels and an intp order index per row held."""
    row = F32 * _elements(network.input_shape) + I32 + I64
    chunk = spec.data.chunk_examples
    if spec.optimizer.algorithm == "sandblaster":  # any portion of the whole (shuffled) split
        rows, formula = data.n_train, "n_train rows (portions come from the whole split)"
    elif chunk:
        rows = 2 * chunk if data.n_train is None else 2 * min(chunk, _largest_part(spec, data.n_train))
        formula = f"2 chunks of data.chunk_examples = {chunk:,} rows"
    else:
        rows = None if data.n_train is None else _largest_part(spec, data.n_train)
        formula = "the replica's part of the training split, n_train / R rows"
    shown = "?" if rows is None else f"{rows:,}"
    return Term("training data", f"{formula} ({shown}) x {row:,} B", None if rows is None else rows * row)


def _largest_part(spec, n_train: int) -> int:
    stop_minus_start = replica_slice(n_train, 0, spec.topology.replicas)  # replica 0's is the largest
    return stop_minus_start[1] - stop_minus_start[0]


def _activation_term(network, topology, partition: int, batch: int) -> Term:
    layers = _partition_layers(network, topology, partition)
    per_example = activation_bytes(layers, network.input_shape, network.n_classes, topology.partitions_per_replica > 1)
    formula = f"batch {batch:,} x {per_example:,} B: layer outputs, kept backward buffers, the minibatch"
    return Term("activations", formula, batch * per_example)


def activation_bytes(layers, input_shape: tuple, n_classes: int, partitioned: bool) -> int:
    """Bytes per example a gradient step keeps: every layer's output (float32) and, after the
    first, its input gradient; max pooling's argmax (int64) and LCN's per-pixel divisor; a
    partition also keeps each layer's assembled input (halo rows, or a dense layer's gathered
    input) and the gathered logits; plus the dlogits and the minibatch itself (with its label).
    Transient exchange buffers are not counted."""
    total = F32 * (_elements(input_shape) + n_classes) + I32
    for index, layer in enumerate(layers):
        total += F32 * _elements(layer.out_shape)
        if index > 0:
            total += F32 * _elements(layer.in_shape)
        if partitioned:
            total += F32 * _elements(layer.in_shape)
        total += layer.kept_bytes()  # an int64 argmax (max pooling), a float32 divisor (LCN)
    return total + (F32 * n_classes if partitioned else 0)


def _elements(shape: tuple) -> int:
    return math.prod(int(s) for s in shape)


# -- evaluation and params.h5 ------------------------------------------------------------------
def _evaluator_extra(spec, network, layout, data: DataSize) -> RankMemory:
    """What replica 0's ranks hold on top of their role: they alone read the test split and
    evaluate, each partition its block with its part of the network (roles/downpour/final.py,
    roles/sandblaster/replica.py)."""
    parts = spec.topology.partitions_per_replica
    ranks = tuple(r.world_rank for r in layout.roles if r.role == "replica" and r.replica_id == 0)
    layers_of = [_partition_layers(network, spec.topology, p) for p in range(parts)]
    forward = max(forward_bytes(layers, network.n_classes, parts > 1) for layers in layers_of)
    batch = min(evaluation_batch(layers, network.n_classes, parts > 1) for layers in layers_of)
    eval_batch = batch if data.n_test is None else min(batch, data.n_test)
    terms = [
        Term("evaluation buffers", f"batch {eval_batch:,} x {forward:,} B (forward only)", eval_batch * forward),
        _test_split(network, data),
    ]
    if spec.optimizer.algorithm == "downpour":  # the final evaluation fetches the block into its own vector
        block = max(_block(network, layout, p) for p in range(parts))
        terms.insert(0, Term("parameters to evaluate", f"B x 4 B, B = {block:,}", block * F32))
    return RankMemory("replica 0, in addition", ranks, tuple(terms))


def _params_writer_extra(spec, layout) -> RankMemory | None:
    """params.h5 is streamed from the shards a chunk at a time (the lead: the coordinator or
    replica 0's first partition); SGD writes its own vector."""
    if spec.optimizer.algorithm == "sgd":
        return None
    longest = max(stop - start for start, stop in layout.shard_ranges)
    chunk = min(PARAMS_CHUNK, longest)
    formula = f"min(4,194,304, the longest shard's L = {longest:,}) x 4 B"
    return RankMemory(
        "the lead, writing params.h5", (layout.lead_rank,), (Term("params.h5 chunk", formula, chunk * F32),)
    )


def _test_split(network, data: DataSize) -> Term:
    row = F32 * _elements(network.input_shape) + I32
    shown = "?" if data.n_test is None else f"{data.n_test:,}"
    return Term("test split", f"n_test ({shown}) x {row:,} B", None if data.n_test is None else data.n_test * row)


# -- printing --------------------------------------------------------------------------------
def format_bytes(count: float) -> str:
    """Decimal units, three significant digits: '512 B', '1.21 GB'."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.3g} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def format_memory(rows: list[RankMemory]) -> str:
    """The table `plan --memory` prints: a line per role, then its terms."""
    lines = ["memory per rank (predicted; add ~150 MB per rank for Python, MPI and compiled kernels):"]
    width = max(len(row.role) for row in rows) + 2
    lines.append(f"  {'role':<{width}} {'ranks':<16} {'bytes':>10}")
    name_width = max(len(term.name) for row in rows for term in row.terms)
    for row in rows:
        total = format_bytes(row.total) + ("" if row.complete else "+")
        lines.append(f"  {row.role:<{width}} {_rank_list(row.ranks):<16} {total:>10}")
        for term in row.terms:
            shown = "?" if term.bytes is None else format_bytes(term.bytes)
            lines.append(f"      {term.name:<{name_width}} {shown:>10}  {term.formula}")
    if not all(row.complete for row in rows):
        lines.append("  + : a lower bound; '?' terms need the dataset (its split sizes)")
    lines += [
        "  on one node, MPI maps the shards' windows into the replicas' memory: a replica rank's RSS",
        "  then also counts the window pages it reads and writes, up to (2 + K) x B x 4 B",
        "  (shared_window_bytes; the node holds them once; none across nodes)",
    ]
    return "\n".join(lines)


def predicted_by_rank(spec, network, layout, data: DataSize, one_node: bool) -> dict[int, int]:
    """{world rank: predicted bytes}: the rows of predict_memory naming the rank (its role's, and
    replica 0's and the lead's extras where they apply), plus, when every rank shares one node,
    the shards' window pages a replica's RSS also counts (shared_window_bytes)."""
    predicted: dict[int, int] = {}
    for row in predict_memory(spec, network, layout, data):
        for rank in row.ranks:
            predicted[rank] = predicted.get(rank, 0) + row.total
    if one_node:
        predicted = {
            rank: value + shared_window_bytes(spec, network, layout, rank) for rank, value in predicted.items()
        }
    return predicted


def shared_window_bytes(spec, network, layout, rank: int) -> int:
    """What a replica rank's RSS counts of its shards' windows when they share its node: the two
    published buffers and up to K landing slots over its block B (MPICH maps a window into
    every rank of the node; reading or writing its pages makes them resident there too)."""
    role = layout.role_of(rank)
    if role.role != "replica" or spec.optimizer.algorithm == "sgd":
        return 0
    return (2 + landing_slots(spec)) * _block(network, layout, role.partition_id) * F32


def _rank_list(ranks: tuple[int, ...]) -> str:
    if len(ranks) <= 4:
        return ", ".join(map(str, ranks))
    return f"{len(ranks)} ranks"
