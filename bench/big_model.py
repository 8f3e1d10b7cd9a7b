"""A model larger than any one rank holds: the paper's image model in the small (issue 12).

    python bench/big_model.py [--filters 48] [--steps 20] [--partitions 4] [--shards 4] [--out-dir DIR]
    python bench/big_model.py --quick      # a few million parameters: a smoke run in seconds

Three stages of [locally connected 8x8 patches (no weight sharing), L2 pooling, local contrast
normalisation] over 3x64x64 images, as in the paper's image model (section 5): with 48
filters per patch position about 590M parameters (2.4 GB of float32). One Downpour replica
split over P ranks by rows of its feature maps, S parameter shards with Adagrad: every rank
holds its own block (a partition) or slice (a shard), never the whole model. The data are
synthetic images whose class is the quadrant and colour of a bright blob, so the loss must
fall. The figures: every rank's peak resident memory (from its log) next to `distbelief plan
--memory`'s prediction, the loss curve, the step time.
"""

import argparse
import datetime
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import REPO, cpu_model, mpiexec_command, usable_cores, write_results

IMAGE = (3, 64, 64)
CLASSES = 8


def write_dataset(path: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """Noise images with one bright 12x12 blob; class = blob quadrant (4) x colour channel pair (2)."""
    from distbelief_mpi.data.writer import DatasetWriter

    rng = np.random.default_rng(seed)
    rows = {"train": n_train, "test": n_test}
    with DatasetWriter(
        path,
        name="blobs-3x64x64",
        source="bench/big_model.py",
        n_classes=CLASSES,
        input_shape=IMAGE,
        x_dtype="uint8",
        n_rows=rows,
        x_scale=1 / 255,
        synthetic=True,
    ) as writer:
        for split, n in rows.items():
            y = rng.integers(0, CLASSES, n)
            x = rng.integers(0, 60, (n, *IMAGE), dtype=np.uint8)
            for i, label in enumerate(y):
                quadrant, colour = divmod(int(label), 2)
                top, left = (
                    8 + 32 * (quadrant // 2) + rng.integers(0, 10),
                    8 + 32 * (quadrant % 2) + rng.integers(0, 10),
                )
                x[i, colour : colour + 2, top : top + 12, left : left + 12] = 230
            writer.append(split, x, y.astype(np.uint8))


def job_text(filters: int, partitions: int, shards: int, steps: int, data: Path) -> str:
    stage = (
        f'  {{ type = "local", filters = {filters}, patch = 8, stride = 1, activation = "relu" }},\n'
        '  { type = "l2pool", size = 3, stride = 1 },\n'
        '  { type = "lcn", size = 5 },\n'
    )
    return (
        f"[topology]\nshards = {shards}\nreplicas = 1\npartitions_per_replica = {partitions}\n\n"
        f"[model]\nlayers = [\n{stage * 3}]\n\n"
        '[optimizer]\nalgorithm = "downpour"\nlearning_rate = 0.001\nbatch_size = 8\n'
        # Adagrad's first step moves every weight by about the rate: the softmax layer sums
        # 65,712 inputs (48 x 37 x 37), so a larger rate throws its logits far off at once.
        'server_rule = "adagrad"\nserver_learning_rate = 0.00002\nlanding_slots = 1\n\n'
        f'[data]\npath = "{data}"\neval_examples = 64\n\n'
        f"[run]\nsteps = {steps}\nseed = 0\neval_every = 0\nprogress_seconds = 0\n\n"
        "[faults]\nwatchdog_seconds = 0\n"
    )


def plan_memory(job: Path, ranks: int) -> str:
    command = [sys.executable, "-m", "distbelief_mpi", "plan", str(job), "-n", str(ranks), "--memory"]
    return subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO).stdout


def predicted_for_job(job: Path, ranks: int) -> dict[int, int]:
    """{world rank: predicted bytes} for the job file on `ranks` ranks of one node (memory.predicted_by_rank)."""
    from distbelief_mpi.config import load_job
    from distbelief_mpi.data.hdf5 import read_info
    from distbelief_mpi.layout import plan_layout
    from distbelief_mpi.memory import DataSize, predicted_by_rank
    from distbelief_mpi.model.network import build_network
    from distbelief_mpi.model.partition import partition_offsets

    spec = load_job(str(job))
    info = read_info(spec.data.path)
    network = build_network(spec.model.layers, info.input_shape, info.n_classes)
    layout = plan_layout(ranks, spec, network.n_params, partition_offsets(network, spec))
    # one node: a replica's RSS also counts the shards' window pages it touches (shared memory)
    return predicted_by_rank(spec, network, layout, DataSize(info.n_train, info.n_test), one_node=True)


def train(job: Path, ranks: int, run_dir: Path, timeout: float) -> float:
    command = [*mpiexec_command(ranks), sys.executable, "-m", "distbelief_mpi", "train", str(job)]
    started = time.perf_counter()
    subprocess.run([*command, "--run-dir", str(run_dir), "--no-progress"], check=True, cwd=REPO, timeout=timeout)
    return time.perf_counter() - started


def rank_peaks(run_dir: Path) -> dict[int, tuple[str, int]]:
    """{rank: (role label, peak RSS bytes)} from each rank's log line `peak RSS N bytes`."""
    peaks = {}
    for log in sorted((run_dir / "logs").glob("rank-*.log")):
        text = log.read_text()
        for line in text.splitlines():
            match = re.search(r"\[rank (\d+) ([^\]]+)\].*peak RSS (\d+) bytes", line)
            if match:
                peaks[int(match.group(1))] = (match.group(2), int(match.group(3)))
    return peaks


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["train_loss"] for r in map(json.loads, lines) if r.get("kind") == "train"]


def report(
    args, n_params: int, summary: dict, predicted: dict[int, int], peaks: dict, baseline: dict, wall_s: float
) -> str:
    lines = [
        "## A model larger than any one rank holds",
        "",
        f"{n_params / 1e6:,.0f}M parameters ({n_params * 4 / 2**30:.2f} GiB float32): 3 stages of locally "
        f"connected 8x8 x {args.filters} filters, L2 pooling, LCN on 3x64x64 images; 1 replica x "
        f"{args.partitions} partitions + {args.shards} shards, {args.steps} steps, batch 8; "
        f"{usable_cores()} cores ({cpu_model()}), {datetime.date.today()}.",
        f"Command: `python bench/big_model.py --filters {args.filters} --steps {args.steps} "
        f"--partitions {args.partitions} --shards {args.shards}`",
        "",
        "Predicted: `distbelief plan --memory` (what the rank holds for the model) plus the runtime",
        "baseline (Python, MPI, Numba: the same rank's peak in a 1-filter run of the same topology,",
        "measured first in the same invocation); on one node a replica's RSS also counts the shards'",
        "window pages it touches (`memory.shared_window_bytes`), included in plan --memory here.",
        "",
        "| rank | role | peak RSS | baseline | plan --memory | predicted | measured / predicted |",
        "|---|---|---|---|---|---|---|",
    ]
    for rank, (label, peak) in sorted(peaks.items()):
        base, model = baseline.get(rank, (label, 0))[1], predicted.get(rank, 0)
        cells = [f"{value / 2**30:.2f} GiB" for value in (peak, base, model, base + model)]
        lines.append(f"| {rank} | {label} | {' | '.join(cells)} | {peak / (base + model):.2f} |")
    trained = summary["train_s"] if "train_s" in summary else summary["wall_s"]
    first, last = args.curve[:5], args.curve[-5:]
    lines += [
        "",
        f"Train loss (batch 8, one window a step): mean of the first 5 windows {np.mean(first):.3f}, of the "
        f"last 5 {np.mean(last):.3f} (chance: ln {CLASSES} = {np.log(CLASSES):.3f}); "
        f"{trained / max(summary['steps'], 1):.2f} s per step; whole run {wall_s:.0f} s (start-up, initial "
        "draw, final evaluation and params.h5 included).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--filters", type=int, default=48, help="filters per patch position (48: ~590M params)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="4 filters, 6 steps: a smoke run")
    parser.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    if args.quick:
        args.filters, args.steps = 4, 6
    work = Path(tempfile.mkdtemp(prefix="big_model-"))
    data, job, run_dir = work / "blobs.h5", work / "big_model.toml", work / "run"
    write_dataset(data, n_train=512, n_test=64)
    ranks = args.shards + args.partitions
    job.write_text(job_text(1, args.partitions, args.shards, 2, data))  # the runtime baseline
    train(job, ranks, work / "baseline", timeout=600)
    baseline = rank_peaks(work / "baseline")
    job.write_text(job_text(args.filters, args.partitions, args.shards, args.steps, data))
    plan_text = plan_memory(job, ranks)
    print(plan_text)
    wall_s = train(job, ranks, run_dir, timeout=3600)
    summary = json.loads((run_dir / "summary.json").read_text())
    curve = args.curve = losses(run_dir)
    predicted, peaks = predicted_for_job(job, ranks), rank_peaks(run_dir)
    text = report(args, summary["n_params"], summary, predicted, peaks, baseline, wall_s)
    print(text)
    data = {"summary": summary, "losses": curve, "predicted": predicted, "peaks": peaks, "baseline": baseline}
    write_results(args.out_dir, "big_model", text, data)


if __name__ == "__main__":
    main()
