"""Downpour across emulated hosts: examples/s of one job on one host and across two, in one run.

    python bench/multihost.py [--rounds 3] [--rate 1gbit] [--quick] [--out-dir DIR]

The job is jobs/digits_downpour.toml (2 shards, 3 replicas, the real digits set), unchanged:
once with `mpiexec -n 5` on this machine, once on two emulated hosts (distbelief_mpi/emulation:
network namespaces behind a bridge, UCX kept on TCP between hosts) with the shards on h1 and the
replicas on h2, where optimizer.transfers = auto picks the pipelined transfers, and once more
across hosts with transfers = inline (each step's push and fetch complete within it) to show
what the pipelining buys. Rounds interleave the configurations, so they see the same load; the
table gives medians. Target (issue 13): across hosts >= 0.5x one host's examples/s, accuracy
unchanged. Needs root (namespaces); says why and exits 2 where they cannot be made.
"""

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import cpu_model, mpiexec_command, mpiexec_path, write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distbelief_mpi.emulation import EmulatedHosts, mpiexec_argv, unavailable_reason  # noqa: E402

TARGET = 0.5
CONFIGS = ("one host", "2 hosts, auto (pipelined)", "2 hosts, inline")


def make_dataset(workdir: Path) -> Path:
    path = workdir / "digits.h5"
    subprocess.run([sys.executable, "-m", "data_tools", "digits", str(path)], check=True, cwd=REPO, capture_output=True)
    return path


def run_once(config: str, hosts: EmulatedHosts, dataset: Path, workdir: Path, epochs: int) -> dict:
    run_dir = Path(tempfile.mkdtemp(dir=workdir)) / "run"
    sets = [f"data.path={dataset}", f"run.epochs={epochs}"]
    if config.endswith("inline"):
        sets.append("optimizer.transfers=inline")
    launch = mpiexec_command(5) if config == "one host" else mpiexec_argv(hosts, [2, 3], mpiexec_path())
    command = [*launch, sys.executable, "-m", "distbelief_mpi", "train", str(REPO / "jobs" / "digits_downpour.toml")]
    command += ["--run-dir", str(run_dir), "--no-progress", *[item for kv in sets for item in ("--set", kv)]]
    subprocess.run(command, check=True, cwd=REPO, capture_output=True, timeout=600)
    return json.loads((run_dir / "summary.json").read_text())


def table(results: dict[str, list[dict]], args) -> str:
    def median(config: str, key: str) -> float:
        return statistics.median(s[key] for s in results[config])

    base = median("one host", "examples_per_s")
    rate = args.rate or "unshaped veth"
    lines = [
        "## Downpour across hosts",
        "",
        f"jobs/digits_downpour.toml (2 shards + 3 replicas, digits), {args.epochs} epochs per replica; "
        f"across hosts: shards on h1, replicas on h2, link {rate}, UCX on TCP. Median of {args.rounds} "
        f"interleaved rounds; {cpu_model()}, 2 cores shared by all ranks of both hosts, {datetime.date.today()}.",
        f"Command: `python bench/multihost.py --rounds {args.rounds}{' --rate ' + args.rate if args.rate else ''}"
        f"{' --quick' if args.quick else ''}`",
        "",
        "| configuration | examples/s | vs one host | test accuracy | pushes applied | mean staleness |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for config in CONFIGS:
        speed = median(config, "examples_per_s")
        lines.append(
            f"| {config} | {speed:,.0f} | {speed / base:.2f}x | {median(config, 'test_accuracy'):.4f} "
            f"| {median(config, 'pushes_applied'):,.0f} | {median(config, 'staleness_mean'):.1f} |"
        )
    ratio = median(CONFIGS[1], "examples_per_s") / base
    lines += ["", f"Across hosts (auto) / one host: **{ratio:.2f}x** (target >= {TARGET}x)."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100, help="per replica (the job's own: 100)")
    parser.add_argument("--rate", help="shape both hosts' links (tc rate, e.g. 1gbit)")
    parser.add_argument("--quick", action="store_true", help="1 round of 10 epochs (a smoke run)")
    parser.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.epochs = 1, 10
    reason = unavailable_reason()
    if reason:
        print(f"bench/multihost.py: emulated hosts unavailable: {reason}", file=sys.stderr)
        return 2
    results: dict[str, list[dict]] = {config: [] for config in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp, EmulatedHosts(2, rate=args.rate, name="mhb", subnet="10.237.0") as hosts:
        dataset = make_dataset(Path(tmp))
        for round_ in range(args.rounds):
            for config in CONFIGS:
                summary = run_once(config, hosts, dataset, Path(tmp), args.epochs)
                results[config].append(summary)
                print(f"round {round_ + 1} {config}: {summary['examples_per_s']:,.0f} examples/s", file=sys.stderr)
    text = table(results, args)
    stem = "multihost" + ("_" + args.rate if args.rate else "")
    write_results(args.out_dir, stem, text, {c: [dict(s) for s in runs] for c, runs in results.items()})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
