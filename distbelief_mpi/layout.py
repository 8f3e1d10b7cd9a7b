"""PURE: which MPI rank plays which role, and which slice of the parameters each shard owns.

Rank order: [coordinator] + shards + replicas (replica-major, partition-minor). So with
a coordinator, 2 shards and 2 replicas of 2 partitions: rank 0 coordinator, ranks 1-2
shards 0-1, ranks 3-4 replica 0 partitions 0-1, ranks 5-6 replica 1 partitions 0-1.
"""

from dataclasses import dataclass

from .config import JobSpec, Topology
from .errors import LayoutError

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
        (
            lambda t: t.shards >= t.partitions_per_replica,
            "optimizer.algorithm = downpour with partitioned replicas gives every partition its own shards: "
            "set topology.shards >= topology.partitions_per_replica",
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
        (
            lambda t: t.shards >= t.partitions_per_replica,
            "optimizer.algorithm = sandblaster with partitioned replicas gives every partition its own shards: "
            "set topology.shards >= topology.partitions_per_replica",
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


@dataclass(frozen=True)
class Layout:
    world_size: int
    roles: tuple[RankRole, ...]
    shard_ranges: tuple[tuple[int, int], ...]  # [start, stop) of the flat vector per shard
    n_params: int
    partition_offsets: tuple[int, ...] = ()  # partition p's parameters: [offsets[p], offsets[p + 1])
    shard_partitions: tuple[int, ...] = ()  # the partition whose parameters each shard holds

    def shards_of_partition(self, partition_id: int) -> list[int]:
        """The shards a partition talks to (all of them for an unpartitioned replica)."""
        if not self.shard_partitions:
            return list(range(len(self.shard_ranges)))
        return [s for s, p in enumerate(self.shard_partitions) if p == partition_id]

    def rank_of(self, replica_id: int, partition_id: int) -> int:
        return next(
            r.world_rank
            for r in self.roles
            if r.role == "replica" and (r.replica_id, r.partition_id) == (replica_id, partition_id)
        )

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


def layout_problems(world_size: int, spec: JobSpec, n_params: int | None) -> list[str]:
    """Everything that stops this spec from running on world_size ranks, all at once."""
    topology = spec.topology
    problems = [message for check, message in ALGORITHM_RULES[spec.optimizer.algorithm] if not check(topology)]
    needed = ranks_needed(topology)
    if needed != world_size:
        problems.append(f"needs {needed} ranks ({_rank_sum(topology)}), got {world_size}")
    if n_params is not None and topology.shards > max(1, n_params // SHARD_ALIGN):
        problems.append(f"topology.shards = {topology.shards} is more than {n_params} parameters can be split into")
    return problems


def plan_layout(
    world_size: int, spec: JobSpec, n_params: int | None = None, partition_offsets: tuple[int, ...] = ()
) -> Layout:
    """Assign every rank its role. Raises LayoutError listing every problem. With partitioned
    replicas, partition_offsets (model/partition.ParamOrder.offsets) cut the parameter vector into
    the partitions' blocks, and every shard holds part of one block only."""
    problems = layout_problems(world_size, spec, n_params)
    if problems:
        raise LayoutError(problems)
    roles = assign_roles(spec.topology)
    if len(partition_offsets) > 2 and spec.topology.shards:
        ranges, owners = partition_shard_ranges(partition_offsets, spec.topology.shards)
        return Layout(world_size, roles, ranges, n_params or 0, tuple(partition_offsets), owners)
    ranges = shard_ranges(n_params or 0, spec.topology.shards)
    return Layout(world_size, roles, ranges, n_params or 0)


def partition_shard_ranges(offsets: tuple[int, ...], n_shards: int):
    """Shards shared out among partitions in proportion to their parameter counts (at least one
    each), then each partition's block split as shard_ranges does. Returns (ranges, owners)."""
    sizes = [offsets[p + 1] - offsets[p] for p in range(len(offsets) - 1)]
    counts = [1] * len(sizes)
    for _ in range(n_shards - len(sizes)):  # the next shard to the partition with most per shard
        counts[max(range(len(sizes)), key=lambda p: sizes[p] / counts[p])] += 1
    ranges, owners = [], []
    for p, (size, count) in enumerate(zip(sizes, counts)):
        for start, stop in shard_ranges(size, count):
            ranges.append((offsets[p] + start, offsets[p] + stop))
            owners.append(p)
    return tuple(ranges), tuple(owners)


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
    parts.append(f"{topology.replicas} replicas x {topology.partitions_per_replica} partitions")
    return " + ".join(parts)


def format_layout(layout: Layout) -> str:
    """The table `distbelief plan` prints: rank, role, ids, parameter range."""
    rows = [("rank", "role", "id", "parameters")]
    for role in layout.roles:
        if role.role == "shard":
            start, stop = layout.shard_ranges[role.shard_id]
            owner = f" (partition {layout.shard_partitions[role.shard_id]})" if layout.shard_partitions else ""
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


def _replica_parameters(layout: Layout, role: RankRole) -> str:
    if not layout.shard_ranges:
        return "all (held locally)"
    if not layout.partition_offsets:
        return "-"
    start, stop = layout.partition_offsets[role.partition_id], layout.partition_offsets[role.partition_id + 1]
    shards = ", ".join(map(str, layout.shards_of_partition(role.partition_id)))
    return f"[{start}, {stop}) = {stop - start}, with shards {shards}"
