"""Resume onto a smaller topology: does a run finish as well as one never interrupted?

    python bench/reshape_resume.py [--steps 3000] [--repeats 3] [--dataset data/fashion-mnist.h5]
                                   [--out-dir DIR] [--quick]

jobs/fashion_downpour.toml (Downpour + Adagrad, 2 shards x 4 replicas, 6 ranks), per repeat r
(seed r, the two runs one after the other):
  uninterrupted  --steps steps per replica on 2 x 4
  resumed        --steps/2 on 2 x 4, checkpointed there, then resumed with 1 shard x 2 replicas
                 (3 ranks: the checkpoint is re-sliced), twice from the same checkpoint:
                   same examples: as many examples after the resume as the uninterrupted run's
                                  second half (2 replicas: --steps more steps each)
                   same steps:    up to --steps (3/4 of the uninterrupted run's examples)
All evaluate on the whole test split at the end. Target (issue 14): the resumed run ends within 1
point of the uninterrupted one (median over the repeats; same examples, the fair budget).
"""

import argparse
import datetime
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from machine import cpu_model, train_job, write_results  # bench/machine.py

JOB = "fashion_downpour.toml"
TARGET_POINTS = 1.0


def pair(dataset: str, steps: int, seed: int, workdir: Path) -> dict:
    """(uninterrupted, resumed) final test accuracy for one seed."""
    common = [f"data.path={dataset}", "run.epochs=0", f"run.seed={seed}", "checkpoint.every_seconds=0"]
    whole = train_job(JOB, 6, [*common, f"run.steps={steps}"], workdir / "whole", timeout=1800)
    half = [*common, f"run.steps={steps // 2}", f"checkpoint.every_steps={steps // 2}"]
    train_job(JOB, 6, half, workdir / "cut", timeout=1800)
    shutil.copytree(workdir / "cut", workdir / "cut-2")
    figures = {"seed": seed, "uninterrupted": whole["test_accuracy"]}
    for name, run_dir, limit in (("same_examples", "cut", steps // 2 + steps), ("same_steps", "cut-2", steps)):
        smaller = [*common, f"run.steps={limit}", "topology.shards=1", "topology.replicas=2"]
        resumed = train_job(JOB, 3, smaller, workdir / run_dir, 1800, args=("--resume", str(workdir / run_dir)))
        assert resumed["resumed_from"]["from_topology"]["replicas"] == 4, resumed["resumed_from"]
        figures[name] = resumed["test_accuracy"]
    return figures


def table(pairs: list[dict], command: str, steps: int) -> str:
    lines = [
        "## Resume onto another topology (Fashion-MNIST)",
        "",
        f"Machine: {cpu_model()}, {datetime.date.today()}. Command: `{command}`. {JOB}: Downpour + Adagrad, "
        f"{steps} steps per replica on 2 shards x 4 replicas (uninterrupted), or {steps // 2} there, "
        f"checkpointed, then resumed on 1 shard x 2 replicas to {steps}. Test accuracy on all 10,000 images.",
        "",
        "| seed | uninterrupted | resumed 2x4 -> 1x2, same examples | difference | same steps | difference |",
        "|---|---|---|---|---|---|",
    ]
    for p in pairs:
        lines.append(
            f"| {p['seed']} | {p['uninterrupted']:.2%} | {p['same_examples']:.2%} | "
            f"{_points(p, 'same_examples'):+.2f} | {p['same_steps']:.2%} | {_points(p, 'same_steps'):+.2f} |"
        )
    fair = statistics.median(_points(p, "same_examples") for p in pairs)
    fewer = statistics.median(_points(p, "same_steps") for p in pairs)
    verdict = "met" if abs(fair) <= TARGET_POINTS else "missed"
    lines += [
        "",
        f"Median difference (points): same examples {fair:+.2f}, same steps {fewer:+.2f}. Target, within "
        f"{TARGET_POINTS:g} point with the same examples: {verdict}.",
    ]
    return "\n".join(lines)


def _points(figures: dict, resumed: str) -> float:
    return 100 * (figures[resumed] - figures["uninterrupted"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="data/fashion-mnist.h5")
    parser.add_argument("--steps", type=int, default=3000, help="steps per replica of the whole run (even)")
    parser.add_argument("--repeats", type=int, default=3, help="seeds 0 .. repeats-1")
    parser.add_argument("--out-dir", help="write reshape_resume.md/.json here")
    parser.add_argument("--quick", action="store_true", help="200 steps, one seed: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = 200, 1
    if args.steps < 2 or args.repeats < 1:
        parser.error("--steps must be >= 2 and --repeats >= 1")
    dataset = str(Path(args.dataset).resolve())
    pairs = []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in range(args.repeats):
            pairs.append(pair(dataset, args.steps, seed, Path(workdir) / str(seed)))
            print(f"seed {seed}: {pairs[-1]}", file=sys.stderr, flush=True)
    command = f"python bench/reshape_resume.py --steps {args.steps} --repeats {args.repeats}"
    text = table(pairs, command, args.steps)
    print(text)
    if args.out_dir:
        write_results(args.out_dir, "reshape_resume", text, pairs)


if __name__ == "__main__":
    main()
