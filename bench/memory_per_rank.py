"""Peak memory per rank as partitions and shards are added (issue 12's table).

    python bench/memory_per_rank.py [--hidden 8192] [--steps 10] [--out-dir DIR]

A Downpour job on the digits dataset with hidden layers dense H + dense H (H = 8192: 67.7M
parameters, 271 MB of float32), 10 steps, 1 replica, with (shards, partitions) = (1, 1) and
(4, 4), next to the same topologies with a tiny model (dense 64: the runtime baseline). Every
rank's peak resident memory comes from its log. The figure of merit: the largest rank's peak
minus the tiny-model baseline, in bytes per parameter of the whole model (the issue's target
at P = 4, S = 4: <= 6; before it: 30).
"""

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import REPO, cpu_model, mpiexec_command, usable_cores, write_results

TOPOLOGIES = ((1, 1), (4, 4))  # (shards, partitions per replica)


def job_text(hidden: int, shards: int, parts: int, steps: int, data: Path) -> str:
    layer = f'{{ type = "dense", units = {hidden}, activation = "relu" }}'
    return (
        f"[topology]\nshards = {shards}\nreplicas = 1\npartitions_per_replica = {parts}\n\n"
        f"[model]\nlayers = [{layer}, {layer}]\n\n"
        '[optimizer]\nalgorithm = "downpour"\nlearning_rate = 0.01\nbatch_size = 32\n'
        'server_rule = "adagrad"\nserver_learning_rate = 0.01\n\n'
        f'[data]\npath = "{data}"\n\n[run]\nsteps = {steps}\nseed = 0\nprogress_seconds = 0\n'
    )


def run(hidden: int, shards: int, parts: int, steps: int, data: Path, work: Path, repo: Path) -> tuple[dict, int]:
    """({rank: (role, peak bytes)}, n_params) of one training run of the code in `repo`."""
    tag = f"h{hidden}-s{shards}-p{parts}"
    job, run_dir, rss_dir = work / f"{tag}.toml", work / tag, work / f"{tag}-rss"
    job.write_text(job_text(hidden, shards, parts, steps, data))
    wrapper = [sys.executable, str(Path(__file__).with_name("rss_of_rank.py")), str(rss_dir)]
    command = [*mpiexec_command(shards + parts), *wrapper, "train", str(job), "--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    subprocess.run([*command, "--no-progress"], check=True, cwd=repo, timeout=1800, env=env)
    peaks = {}
    for path in rss_dir.glob("rank-*.rss"):
        rank = int(path.stem.split("-")[1])
        peaks[rank] = ("shard" if rank < shards else "replica", int(path.read_text()))
    n_params = int(re.search(r'"n_params": (\d+)', (run_dir / "summary.json").read_text()).group(1))
    return peaks, n_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    parser.add_argument("--repo", default=str(REPO), help="the checkout whose code to measure (default: this one)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="memory_per_rank-"))
    data = work / "digits.h5"
    subprocess.run([sys.executable, "-m", "data_tools", "digits", str(data)], check=True, cwd=REPO, capture_output=True)
    lines = [
        "## Memory per rank",
        "",
        f"Downpour on digits, dense {args.hidden} + dense {args.hidden}, 1 replica, {args.steps} steps; "
        f"every rank's peak RSS (ru_maxrss at its end); {usable_cores()} cores ({cpu_model()}), "
        f"{datetime.date.today()}, code in {args.repo}. "
        f"Command: `python bench/memory_per_rank.py --hidden {args.hidden}`",
        "",
        "| shards | partitions | ranks | largest peak | tiny-model baseline | (largest - baseline) / N |",
        "|---|---|---|---|---|---|",
    ]
    results = {}
    for shards, parts in TOPOLOGIES:
        big, n_params = run(args.hidden, shards, parts, args.steps, data, work, Path(args.repo))
        tiny, _ = run(64, shards, parts, 2, data, work, Path(args.repo))
        largest_rank = max(big, key=lambda r: big[r][1] - tiny[r][1])
        over = big[largest_rank][1] - tiny[largest_rank][1]
        results[f"{shards}x{parts}"] = {"big": big, "tiny": tiny, "n_params": n_params}
        cells = [
            f"{big[largest_rank][1] / 1e9:.2f} GB ({big[largest_rank][0]})",
            f"{tiny[largest_rank][1] / 1e9:.2f} GB",
            f"{over / n_params:.1f} bytes",
        ]
        lines.append(f"| {shards} | {parts} | {shards + parts} | {' | '.join(cells)} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    write_results(args.out_dir, "memory_per_rank", text, results)


if __name__ == "__main__":
    main()
