"""PURE: the Downpour summary from every rank's gathered statistics."""

from ...runtime.peak_memory import peaks_by_role

# What examples_per_s divides by: the slowest replica's loop, timed after its kernel warm-up.
RATE_COVERS = (
    "this invocation's training examples of all replicas over the slowest replica's training loop, "
    "after kernel warm-up (replica 0's periodic evaluations included)"
)


def downpour_summary(job, gathered: list[dict], test_loss: float, test_accuracy: float) -> dict:
    """gathered: one dict per world rank that finished ('shard' and 'replica' records, see
    roles/downpour/run.py); a replica that left mid-run has none and is listed in replicas_lost."""
    spec, n_replicas = job.spec, job.spec.topology.replicas
    shards = sorted((g for g in gathered if g["role"] == "shard"), key=lambda g: g["shard_id"])
    every_partition = [g for g in gathered if g["role"] == "replica"]
    # One record per replica for its steps and examples: partition 0's (its partitions step together).
    replicas = sorted((g for g in every_partition if g.get("partition_id", 0) == 0), key=lambda g: g["replica_id"])
    applied = sum(sum(s["applied"]) for s in shards)
    examples = sum(r["examples_seen"] for r in replicas)
    examples_now = sum(r["examples_this_run"] for r in replicas)  # rates: this invocation only
    loop_s = max(r["loop_s"] for r in replicas)
    staleness_hist = [sum(column) for column in zip(*(s["staleness_hist"] for s in shards))]
    return {
        "algorithm": spec.optimizer.algorithm,
        "server_rule": spec.optimizer.server_rule,
        "world_size": job.layout.world_size,
        "n_replicas": n_replicas,
        "n_shards": len(shards),
        "replicas_lost": sorted(
            {r for s in shards for r in s["lost_replicas"]}
            | set(range(n_replicas)) - {r["replica_id"] for r in replicas}
        ),
        "partitions_per_replica": spec.topology.partitions_per_replica,
        "n_params": job.network.n_params,
        "steps": sum(r["steps"] for r in replicas),
        "replica_steps": _per_replica(replicas, n_replicas, lambda r: r["steps"]),
        "examples_seen": examples,
        "wall_s": loop_s,
        "examples_per_s": examples_now / max(loop_s, 1e-9),
        "examples_per_s_covers": RATE_COVERS,
        "replica_examples_per_s": _per_replica(
            replicas, n_replicas, lambda r: r["examples_this_run"] / max(r["loop_s"], 1e-9)
        ),
        "final_train_loss": replicas[0]["last_train_loss"],
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "stopped_on": replicas[0]["stopped_on"],
        "pushes_applied": applied,
        "pushes_rejected": sum(sum(s["rejected"]) for s in shards),
        "rejected_by_replica": [sum(s["rejected"][r] for s in shards) for r in range(n_replicas)],
        "pushes_deferred": sum(r["deferred_pushes"] for r in every_partition),
        "pushes_too_stale": sum(sum(s["too_stale"]) for s in shards),
        "staleness_mean": sum(s["staleness_sum"] for s in shards) / max(applied, 1),
        "staleness_max": max((s["staleness_max"] for s in shards), default=0),
        "staleness_hist": staleness_hist,
        "shard_versions": [s["version"] for s in shards],
        "steps_pushed_per_shard": [s["steps_pushed"] for s in shards],
        "resumed_from": None
        if job.resume is None
        else {**job.resume.describe(), "shard_versions": [s["resumed_from_version"] for s in shards]},
        "fetch_retries": sum(r["fetch_retries"] for r in every_partition),
        "final_checkpoint": replicas[0]["final_checkpoint"],  # the step committed on preemption, or None
        "dataset": job.info.path,
        "peak_rss_bytes": peaks_by_role(gathered),  # the lead adds its own, measured after evaluating
    }


def _per_replica(replicas: list[dict], n_replicas: int, value) -> list:
    """[value(record) per replica id], None for a replica that left (it sent no record)."""
    by_id = {r["replica_id"]: r for r in replicas}
    return [value(by_id[i]) if i in by_id else None for i in range(n_replicas)]
