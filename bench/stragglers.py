"""Sandblaster with a straggler: batch time with one replica of three slowed 5x, with and without
backup tasks, relative to no straggler, measured in one run.

    python bench/stragglers.py [--dataset data/fashion-mnist.h5] [--rounds 3] [--steps 12] [--quick]

Each configuration is a real `mpiexec -n 6 distbelief train` of the Sandblaster job (coordinator,
2 shards, 3 replicas; the MLP of jobs/fashion_sandblaster.toml on a fixed batch), the slow replica
made so by the job spec's fault knob (faults.inject = "slow": it sleeps 4x its compute time after
each portion, so it does a fifth of a normal replica's work). The figure per run is the median
seconds of one batch pass (`evaluation_s_median` in summary.json: one L-BFGS loss-and-gradient
evaluation over the batch). Rounds run the three configurations interleaved, so they see the same
machine load; the table gives the median over rounds. Target (the issue): <= 1.25x with backups.
"""

import argparse
import datetime
import statistics
import sys
import tempfile
from pathlib import Path

from machine import cpu_model, train_job  # bench/machine.py (bench/ is on sys.path when run as a script)

CONFIGS = {
    "no straggler": [],
    "straggler 5x, backup tasks": [
        'faults.inject="slow"',
        "faults.inject_replica=2",
        "faults.slow_factor=5",
        "optimizer.backup_tasks=true",
    ],
    "straggler 5x, no backups": [
        'faults.inject="slow"',
        "faults.inject_replica=2",
        "faults.slow_factor=5",
        "optimizer.backup_tasks=false",
    ],
}
TARGET = 1.25


def run_once(dataset: str, sets: list[str], steps: int, batch: int, portion: int, workdir: Path) -> dict:
    run_dir = Path(tempfile.mkdtemp(dir=workdir)) / "run"
    common = [
        f"data.path={dataset}",
        f"run.steps={steps}",
        "run.seconds=0",
        "run.eval_every=0",
        f"optimizer.sandblaster_batch={batch}",
        f"optimizer.lbfgs_iterations_per_batch={steps}",
        f"optimizer.portion_examples={portion}",
    ]
    return train_job("fashion_sandblaster.toml", 6, common + sets, run_dir, timeout=900)


def measure(args) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as workdir:
        for round_index in range(args.rounds):
            for name, sets in CONFIGS.items():
                summary = run_once(args.dataset, sets, args.steps, args.batch, args.portion, Path(workdir))
                results[name].append(summary)
                print(
                    f"round {round_index + 1}/{args.rounds} {name}: batch pass "
                    f"{summary['evaluation_s_median'] * 1000:.0f} ms, backups issued {summary['backups_issued']}, "
                    f"won {summary['backups_won']}",
                    file=sys.stderr,
                    flush=True,
                )
    return results


def table(results: dict[str, list[dict]], args) -> str:
    base = statistics.median(s["evaluation_s_median"] for s in results["no straggler"])
    lines = [
        "## Sandblaster stragglers",
        "",
        f"Sandblaster, 3 replicas + 2 shards + coordinator, batch {args.batch} examples in portions of "
        f"{args.portion}, {args.steps} L-BFGS iterations per run, median of {args.rounds} interleaved rounds",
        f"machine: {cpu_model()}, {datetime.date.today()}",
        "",
        "| configuration | batch pass (ms) | vs no straggler | backups issued / won per pass | target |",
        "|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        seconds = statistics.median(s["evaluation_s_median"] for s in runs)
        passes = sum(s["batches"] for s in runs)
        issued, won = sum(s["backups_issued"] for s in runs) / passes, sum(s["backups_won"] for s in runs) / passes
        target = f"<= {TARGET}x" if name == "straggler 5x, backup tasks" else ""
        lines.append(f"| {name} | {seconds * 1000:.0f} | {seconds / base:.2f}x | {issued:.1f} / {won:.1f} | {target} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="data/fashion-mnist.h5")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="L-BFGS iterations per run")
    parser.add_argument("--batch", type=int, default=6000, help="examples per batch")
    parser.add_argument("--portion", type=int, default=100, help="examples per portion")
    parser.add_argument("--quick", action="store_true", help="1 round of 4 iterations on a 3,000-example batch")
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.batch = 1, 4, 3000
    text = table(measure(args), args)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
