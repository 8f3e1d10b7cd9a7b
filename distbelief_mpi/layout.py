"""PURE: which MPI rank plays which role, and which slice of the parameters each shard owns.

Rank order: [coordinator] + shards + replicas (replica-major, partition-minor). So with
a coordinator, 2 shards and 2 replicas of 2 partitions: rank 0 coordinator, ranks 1-2
shards 0-1, ranks 3-4 replica 0 partitions 0-1, ranks 5-6 replica 1 partitions 0-1.
"""

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

from .config import AUTO_REPLICAS, JobSpec, Topology, check_values
from .errors import ConfigError, LayoutError

# Shard boundaries fall on multiples of 16 float32 (64 bytes, one cache line) so two
# shards never share a cache line of the flat parameter vector.
SHARD_ALIGN = 16

# What each algorithm needs of the topology: (check, problem when the check fails).
ALGORITHM_RULES = {
    "sgd": [
        (lambda t: t.replicas == 1, "optimizer.algorithm = sgd trains one replica: set topology.replicas = 1"),
        (
            lambda t: t.shards == 0,
            "optimizer.algorithm = sgd keeps the parameters on the replica: set topology.shards = 0",
        ),
        (lambda t: not t.coordinator, "optimizer.algorithm = sgd has no coordinator: set topology.coordinator = false"),
        (
            lambda t: t.partitions_per_replica == 1,
            "optimizer.algorithm = sgd runs one rank: set topology.partitions_per_replica = 1",
        ),
    ],
    "downpour": [
        (lambda t: t.shards >= 1, "optimizer.algorithm = downpour needs a parameter server: set topology.shards >= 1"),
        (
            lambda t: not t.coordinator,
            "optimizer.algorithm = downpour has no coordinator: set topology.coordinator = false",
        ),
    ],
    "sandblaster": [
        (
            lambda t: t.coordinator,
            "optimizer.algorithm = sandblaster needs a coordinator: set topology.coordinator = true",
        ),
        (
            lambda t: t.shards >= 1,
            "optimizer.algorithm = sandblaster keeps parameters and history on shards: set topology.shards >= 1",
        ),
    ],
}


@dataclass(frozen=True)
class RankRole:
    world_rank: int
    role: str  # "coordinator" | "shard" | "replica"
    shard_id: int = -1
    replica_id: int = -1
    partition_id: int = -1

    @property
    def label(self) -> str:
        """Short name for log lines, e.g. 'shard 1' or 'replica 0/partition 1'."""
        if self.role == "shard":
            return f"shard {self.shard_id}"
        if self.role == "replica":
            return f"replica {self.replica_id}/partition {self.partition_id}"
        return self.role


class Piece(NamedTuple):
    """The part of a partition's block that one shard holds."""

    shard_id: int
    shard_offset: int  # where it starts in the shard's slice
    length: int
    block_offset: int  # where it starts in the partition's block (the replica's own vector)


@dataclass(frozen=True)
class Layout:
    world_size: int
    roles: tuple[RankRole, ...]
    shard_ranges: tuple[tuple[int, int], ...]  # [start, stop) of the flat vector per shard
    n_params: int
    partition_offsets: tuple[int, ...] = ()  # partition p's parameters: [offsets[p], offsets[p + 1])
    # The partitions whose parameters each shard holds: one partition (S >= P: every shard part of
    # one block), or several whole blocks (S < P).
    shard_partitions: tuple[tuple[int, ...], ...] = ()

    def shards_of_partition(self, partition_id: int) -> list[int]:
        """The shards a partition talks to (all of them for an unpartitioned replica)."""
        if not self.shard_partitions:
            return list(range(len(self.shard_ranges)))
        return [s for s, held in enumerate(self.shard_partitions) if partition_id in held]

    def block_of_partition(self, partition_id: int) -> tuple[int, int]:
        """[start, stop) of the partition's parameters in the flat vector (all for P = 1)."""
        if not self.partition_offsets:
            return 0, self.n_params
        return self.partition_offsets[partition_id], self.partition_offsets[partition_id + 1]

    def pieces_of_partition(self, partition_id: int) -> list[Piece]:
        """Where the partition's block lies on its shards, one piece per shard, in block order
        (an unpartitioned replica's block is the whole vector, a piece the whole of each slice)."""
        start, stop = self.block_of_partition(partition_id)
        pieces = []
        for shard_id in self.shards_of_partition(partition_id):
            first, last = self.shard_ranges[shard_id]
            lo, hi = max(first, start), min(last, stop)
            pieces.append(Piece(shard_id, lo - first, max(0, hi - lo), lo - start))
        return pieces

    def rank_of(self, replica_id: int, partition_id: int) -> int:
        """The world rank of a replica's partition, by arithmetic: replicas are the last ranks,
        replica-major and partition-minor (assign_roles)."""
        last = self.roles[-1]
        parts = last.partition_id + 1
        if last.role != "replica" or not (0 <= replica_id <= last.replica_id and 0 <= partition_id < parts):
            raise ValueError(f"no replica {replica_id} partition {partition_id} in this layout")
        first_replica_rank = last.world_rank + 1 - (last.replica_id + 1) * parts
        return first_replica_rank + replica_id * parts + partition_id

    def role_of(self, world_rank: int) -> RankRole:
        return self.roles[world_rank]

    def ranks_of(self, role: str) -> list[int]:
        return [r.world_rank for r in self.roles if r.role == role]

    @property
    def lead_rank(self) -> int:
        """The rank that reports (summary, exit code): the coordinator if there is one, else replica 0."""
        coordinators = self.ranks_of("coordinator")
        return coordinators[0] if coordinators else self.ranks_of("replica")[0]


def ranks_needed(topology: Topology) -> int:
    return int(topology.coordinator) + topology.shards + topology.replicas * topology.partitions_per_replica


class WorldSizeError(LayoutError):
    """Every problem that stops a job spec from running on a world size, under one line naming
    the job file: what `distbelief plan -n N` and `distbelief train` on N ranks both print."""

    def __init__(self, source: str, world_size: int, problems: list[str]):
        super().__init__(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        self.args = (f"{source}: cannot run on {world_size} ranks:\n{lines}",)


class Sizes(NamedTuple):
    """The world sizes a topology fits: first, first + step, first + 2 step, ... (step 0: only first)."""

    first: int
    step: int

    def fit(self, world_size: int) -> bool:
        if self.step == 0:
            return world_size == self.first
        return world_size >= self.first and (world_size - self.first) % self.step == 0

    def nearest(self, world_size: int) -> tuple[int | None, int | None]:
        """The largest size that fits below world_size and the smallest above (None: there is none)."""
        if self.step == 0:
            return (self.first if self.first < world_size else None), (self.first if self.first > world_size else None)
        if world_size <= self.first:
            return None, (self.first if world_size < self.first else self.first + self.step)
        below = self.first + (world_size - 1 - self.first) // self.step * self.step
        above = self.first + ((world_size - self.first) // self.step + 1) * self.step
        return below, above


def sizes_that_fit(spec: JobSpec) -> Sizes:
    """With topology.replicas = "auto", every size after coordinator and shards that holds whole
    replicas (sgd: exactly one); otherwise the one size ranks_needed gives."""
    t = spec.topology
    if t.replicas != AUTO_REPLICAS:
        return Sizes(ranks_needed(t), 0)
    first = int(t.coordinator) + t.shards + t.partitions_per_replica
    return Sizes(first, 0 if spec.optimizer.algorithm == "sgd" else t.partitions_per_replica)


def replicas_on(world_size: int, topology: Topology) -> int:
    """The replicas that world_size ranks hold after coordinator and shards (a size that fits)."""
    return (world_size - int(topology.coordinator) - topology.shards) // topology.partitions_per_replica


def resolve_topology(spec: JobSpec, world_size: int) -> JobSpec:
    """spec with topology.replicas = "auto" replaced by the count world_size holds (the spec as
    it is otherwise): call it once, before planning, so that the rest of the code sees an int.
    Raises WorldSizeError when world_size fits no count, ConfigError when the count breaks
    another key (faults.inject_replica beyond the last replica)."""
    if spec.topology.replicas != AUTO_REPLICAS:
        return spec
    if not sizes_that_fit(spec).fit(world_size):
        raise WorldSizeError(spec.source, world_size, layout_problems(world_size, spec, None))
    topology = dataclasses.replace(spec.topology, replicas=replicas_on(world_size, spec.topology))
    resolved = dataclasses.replace(spec, topology=topology)
    problems = check_values(resolved)
    if problems:
        raise ConfigError(spec.source, [f'{p} (topology.replicas = "auto" on {world_size} ranks)' for p in problems])
    return resolved


def layout_problems(world_size: int, spec: JobSpec, n_params: int | None) -> list[str]:
    """Everything that stops this spec from running on world_size ranks, all at once."""
    topology = spec.topology
    # "auto" is one replica under sgd (sizes_that_fit) and passes its rule; no other rule counts replicas.
    counted = dataclasses.replace(topology, replicas=1) if topology.replicas == AUTO_REPLICAS else topology
    problems = [message for check, message in ALGORITHM_RULES[spec.optimizer.algorithm] if not check(counted)]
    if not sizes_that_fit(spec).fit(world_size):
        problems.append(size_problem(world_size, spec))
    if n_params is not None and topology.shards > max(1, n_params // SHARD_ALIGN):
        problems.append(f"topology.shards = {topology.shards} is more than {n_params} parameters can be split into")
    return problems


RANK_KEYS = "topology.coordinator + topology.shards + topology.replicas x topology.partitions_per_replica"


def size_problem(world_size: int, spec: JobSpec) -> str:
    """Why world_size does not fit, the keys that decide it and the nearest sizes that do, e.g.
    'needs 5 ranks (2 shards + 3 replicas x 1 partitions), got 4 (ranks = topology.coordinator +
    ...): the only size that fits is 5; topology.replicas = "auto" would fit 4 (2 replicas)'."""
    topology, sizes = spec.topology, sizes_that_fit(spec)
    head = f"{needs_text(spec)} ({_rank_sum(topology)}), got {world_size} (ranks = {RANK_KEYS})"
    below, above = sizes.nearest(world_size)
    if sizes.step == 0 and topology.replicas == AUTO_REPLICAS:  # sgd
        return f"{head}: the only size that fits is {sizes.first} (optimizer.algorithm = sgd trains one replica)"
    if sizes.step == 0:
        return f"{head}: the only size that fits is {sizes.first}{_auto_hint(world_size, spec)}"
    fitting = [f"{n} ({_replicas_text(replicas_on(n, topology))})" for n in (below, above) if n is not None]
    if below is None:
        return f"{head}: the smallest size that fits is {fitting[0]}"
    return f"{head}: the nearest sizes that fit are {' and '.join(fitting)}"


def needs_text(spec: JobSpec) -> str:
    """'needs 5 ranks', or with replicas = "auto" 'needs 2 + 2k ranks: 4, 6, 8, ...'."""
    sizes = sizes_that_fit(spec)
    if sizes.step == 0:
        return f"needs {sizes.first} ranks"
    base = sizes.first - sizes.step
    k = "k" if sizes.step == 1 else f"{sizes.step}k"
    listed = ", ".join(str(sizes.first + i * sizes.step) for i in range(3))
    return f"needs {base} + {k} ranks: {listed}, ..."


def _auto_hint(world_size: int, spec: JobSpec) -> str:
    """What topology.replicas = "auto" would make of world_size (not for sgd: one replica)."""
    if spec.optimizer.algorithm == "sgd" or spec.topology.replicas == AUTO_REPLICAS:
        return ""
    auto = dataclasses.replace(spec, topology=dataclasses.replace(spec.topology, replicas=AUTO_REPLICAS))
    sizes = sizes_that_fit(auto)
    if sizes.fit(world_size):
        replicas = _replicas_text(replicas_on(world_size, spec.topology))
        return f'; topology.replicas = "auto" would fit {world_size} ({replicas})'
    nearest = " or ".join(str(n) for n in sizes.nearest(world_size) if n is not None)
    return f'; topology.replicas = "auto" would fit {nearest}'


def _replicas_text(replicas: int) -> str:
    return f"{replicas} replica" if replicas == 1 else f"{replicas} replicas"


def plan_layout(
    world_size: int, spec: JobSpec, n_params: int | None = None, partition_offsets: tuple[int, ...] = ()
) -> Layout:
    """Assign every rank its role. Raises WorldSizeError listing every problem. With partitioned
    replicas, partition_offsets (model/partition.ParamOrder.offsets) cut the parameter vector into
    the partitions' blocks, and every shard holds part of one block, or whole blocks (S < P).
    topology.replicas = "auto" must be resolved first (resolve_topology)."""
    problems = layout_problems(world_size, spec, n_params)
    if problems:
        raise WorldSizeError(spec.source, world_size, problems)
    if spec.topology.replicas == AUTO_REPLICAS:
        raise ValueError('plan_layout: topology.replicas = "auto" is unresolved: call resolve_topology first')
    roles = assign_roles(spec.topology)
    if len(partition_offsets) > 2 and spec.topology.shards:
        ranges, owners = partition_shard_ranges(partition_offsets, spec.topology.shards)
        return Layout(world_size, roles, ranges, n_params or 0, tuple(partition_offsets), owners)
    ranges = shard_ranges(n_params or 0, spec.topology.shards)
    return Layout(world_size, roles, ranges, n_params or 0)


def partition_shard_ranges(offsets: tuple[int, ...], n_shards: int):
    """Returns (ranges, the partitions each shard holds). With at least as many shards as
    partitions, shards are shared out among partitions in proportion to their parameter counts
    (at least one each) and each block split as shard_ranges does; with fewer, each shard holds
    a contiguous group of whole blocks (group_partitions)."""
    if n_shards < len(offsets) - 1:
        groups = group_partitions(offsets, n_shards)
        return tuple((offsets[g[0]], offsets[g[-1] + 1]) for g in groups), groups
    sizes = [offsets[p + 1] - offsets[p] for p in range(len(offsets) - 1)]
    counts = [1] * len(sizes)
    for _ in range(n_shards - len(sizes)):  # the next shard to the partition with most per shard
        counts[max(range(len(sizes)), key=lambda p: sizes[p] / counts[p])] += 1
    ranges, held = [], []
    for p, (size, count) in enumerate(zip(sizes, counts)):
        for start, stop in shard_ranges(size, count):
            ranges.append((offsets[p] + start, offsets[p] + stop))
            held.append((p,))
    return tuple(ranges), tuple(held)


def group_partitions(offsets: tuple[int, ...], n_groups: int) -> tuple[tuple[int, ...], ...]:
    """The P partitions (blocks [offsets[p], offsets[p + 1])) cut into n_groups <= P contiguous,
    non-empty groups of near-equal parameter counts: cut k falls on the partition boundary
    nearest to k/n_groups of the parameters, leaving at least one partition to each group."""
    parts, cuts = len(offsets) - 1, [0]
    for k in range(1, n_groups):
        target = offsets[0] + (offsets[-1] - offsets[0]) * k / n_groups
        candidates = range(cuts[-1] + 1, parts - (n_groups - k) + 1)
        cuts.append(min(candidates, key=lambda p: abs(offsets[p] - target)))
    cuts.append(parts)
    return tuple(tuple(range(a, b)) for a, b in zip(cuts, cuts[1:]))


def assign_roles(topology: Topology) -> tuple[RankRole, ...]:
    """[coordinator] + shards + replicas (replica-major, partition-minor), in rank order."""
    roles: list[RankRole] = []
    if topology.coordinator:
        roles.append(RankRole(len(roles), "coordinator"))
    for shard_id in range(topology.shards):
        roles.append(RankRole(len(roles), "shard", shard_id=shard_id))
    for replica_id in range(topology.replicas):
        for partition_id in range(topology.partitions_per_replica):
            roles.append(RankRole(len(roles), "replica", replica_id=replica_id, partition_id=partition_id))
    return tuple(roles)


def shard_ranges(n_params: int, n_shards: int) -> tuple[tuple[int, int], ...]:
    """Contiguous, near-equal, cache-line-aligned [start, stop) ranges covering 0..n_params."""
    if n_shards == 0:
        return ()
    blocks = -(-n_params // SHARD_ALIGN)  # ceil: number of aligned blocks
    bounds = [min(n_params, (blocks * i // n_shards) * SHARD_ALIGN) for i in range(n_shards + 1)]
    bounds[-1] = n_params
    return tuple((bounds[i], bounds[i + 1]) for i in range(n_shards))


def _rank_sum(topology: Topology) -> str:
    parts = []
    if topology.coordinator:
        parts.append("1 coordinator")
    parts.append(f"{topology.shards} shards")
    replicas = '"auto" replicas' if topology.replicas == AUTO_REPLICAS else f"{topology.replicas} replicas"
    parts.append(f"{replicas} x {topology.partitions_per_replica} partitions")
    return " + ".join(parts)


def format_layout(layout: Layout) -> str:
    """The table `distbelief plan` prints: rank, role, ids, parameter range."""
    rows = [("rank", "role", "id", "parameters")]
    for role in layout.roles:
        if role.role == "shard":
            start, stop = layout.shard_ranges[role.shard_id]
            owner = _partitions_held(layout, role.shard_id)
            rows.append(
                (str(role.world_rank), "shard", str(role.shard_id), f"[{start}, {stop}) = {stop - start}{owner}")
            )
        elif role.role == "replica":
            ids = f"{role.replica_id}/{role.partition_id}"
            rows.append((str(role.world_rank), "replica", ids, _replica_parameters(layout, role)))
        else:
            rows.append((str(role.world_rank), role.role, "-", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _partitions_held(layout: Layout, shard_id: int) -> str:
    if not layout.shard_partitions:
        return ""
    held = layout.shard_partitions[shard_id]
    return f" (partition {held[0]})" if len(held) == 1 else f" (partitions {held[0]}-{held[-1]})"


def _replica_parameters(layout: Layout, role: RankRole) -> str:
    if not layout.shard_ranges:
        return "all (held locally)"
    if not layout.partition_offsets:
        return "-"
    start, stop = layout.partition_offsets[role.partition_id], layout.partition_offsets[role.partition_id + 1]
    shards = ", ".join(map(str, layout.shards_of_partition(role.partition_id)))
    return f"[{start}, {stop}) = {stop - start}, with shards {shards}"
