"""Partitions per node: on a node of N cores, P partition ranks of N / P compute threads each.

    python bench/partitions_per_node.py [--cores N] [--models local speech] [--repeats 7] [--quick] [--out-dir DIR]
    mpiexec -n P python bench/partitions_per_node.py --worker MODEL --threads T     # internal

The choice a user faces on a 16-core node: one replica as 16 partitions of 1 thread, 1 partition
of 16 threads, or between. Every (P, T) with P x T = N runs the same step as bench/model_parallel.py
(its models, its partitioned forward + backward with exchanges over MPI), with
`topology.threads_per_rank = T` applied as the trainer applies it (kernels/thread_pool.py: Numba
and BLAS together), plus 1 x 1 as the reference. Figures: median step time of `repeats` steps
after 2 warm-up steps, and the speed-up over 1 x 1. docs/model_parallel.md reads the table.
"""

import argparse
import datetime
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))  # machine.py, model_parallel.py (run as a worker from elsewhere)
RESULT_PREFIX = "PARTITIONS_PER_NODE_JSON "


def grid(cores: int) -> list[tuple[int, int]]:
    """(partitions, threads) pairs that fill `cores` exactly, most partitions first, then 1 x 1."""
    pairs = [(p, cores // p) for p in range(cores, 0, -1) if cores % p == 0]
    return pairs + ([(1, 1)] if cores > 1 else [])


def misfit(name: str, parts: int) -> str | None:
    """Why model `name` cannot be split in `parts` partitions (e.g. 10 output units over 16), or None."""
    from model_parallel import models  # bench/model_parallel.py

    from distbelief_mpi.errors import LayoutError
    from distbelief_mpi.model.network import build_network
    from distbelief_mpi.model.partition import split_model

    shape, classes, _, layers = models()[name]
    try:
        split_model(build_network(layers, shape, classes), parts)
    except LayoutError as exc:
        return str(exc).splitlines()[1].strip(" -")
    return None


def worker(name: str, threads: int, repeats: int, quick: bool) -> None:
    """Under mpiexec -n P: the partitioned step at `threads` threads per rank; rank 0 prints it."""
    from model_parallel import setup, time_steps  # bench/model_parallel.py
    from mpi4py import MPI

    from distbelief_mpi.kernels.thread_pool import set_compute_threads

    comm = MPI.COMM_WORLD
    network, model, params, x, y, batch = setup(comm, name, quick)
    set_compute_threads(threads)  # after setup, which pins 1 thread for model_parallel.py's own runs
    times, sent = time_steps(comm, model, params, x, y, repeats + 2)
    if comm.Get_rank() == 0:
        result = {
            "model": name,
            "parts": comm.Get_size(),
            "threads": threads,
            "batch": batch,
            "step_s": statistics.median(times[2:]),
            "bytes_sent": statistics.median(sent[2:]),
        }
        print(RESULT_PREFIX + json.dumps(result), flush=True)


def measure(name: str, parts: int, threads: int, repeats: int, quick: bool) -> dict:
    from machine import mpi_result  # bench/machine.py

    # the pools' sizes are fixed when each library loads: at least T threads, set_compute_threads limits them to T
    pools = {key: str(threads) for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    env = {**os.environ, **pools, "NUMBA_NUM_THREADS": str(threads)}
    args = ["--worker", name, "--threads", str(threads), "--repeats", str(repeats)] + (["--quick"] if quick else [])
    return mpi_result(parts, __file__, args, RESULT_PREFIX, timeout=1800, env=env)


def report(results: list[dict], cores: int, command: str) -> str:
    from machine import cpu_model  # bench/machine.py

    lines = [
        "## Partitions per node: P ranks x T threads",
        "",
        f"{cpu_model()}, {cores} cores used, {datetime.date.today()}. Command: `{command}`. One replica; "
        "P partitions (rows of the image layers, columns of the dense ones) of T compute threads each.",
        "",
        "| model | P x T | step | speed-up over 1 x 1 | bytes sent per step (rank 0) |",
        "|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == name]
        base = next(r["step_s"] for r in rows if r["parts"] == 1 and r["threads"] == 1)
        for r in rows:
            if "misfit" in r:
                lines.append(f"| {name} | {r['parts']} x {r['threads']} | does not fit: {r['misfit']} | | |")
                continue
            lines.append(
                f"| {name} | {r['parts']} x {r['threads']} | {r['step_s'] * 1e3:.1f} ms | "
                f"{base / r['step_s']:.2f}x | {r['bytes_sent'] / 1e6:.2f} MB |"
            )
    return "\n".join(lines)


def main() -> None:
    from machine import usable_cores, write_results  # bench/machine.py

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", type=int, default=usable_cores(), help="N: cores to fill (default: all usable)")
    ap.add_argument("--models", nargs="+", default=["local", "speech"], choices=["local", "speech"])
    ap.add_argument("--repeats", type=int, default=7, help="timed steps per point (default 7)")
    ap.add_argument("--quick", action="store_true", help="small batches, 3 repeats: a smoke run")
    ap.add_argument("--out-dir", help="write partitions_per_node.{md,json} here")
    ap.add_argument("--worker", metavar="MODEL", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    repeats = 3 if args.quick else args.repeats
    if args.worker:
        worker(args.worker, args.threads, repeats, args.quick)
        return
    if args.cores < 1 or repeats < 1:
        ap.error(f"--cores and --repeats must be >= 1, got {args.cores} and {repeats}")  # exit 2
    command = " ".join(["python bench/partitions_per_node.py"] + sys.argv[1:])
    results = []
    for name in args.models:
        for parts, threads in grid(args.cores):
            why = misfit(name, parts)
            point = {"model": name, "parts": parts, "threads": threads, "misfit": why} if why else None
            results.append(point or measure(name, parts, threads, repeats, args.quick))
            print(json.dumps(results[-1]), flush=True)
    text = report(results, args.cores, command)
    print(text)
    if args.out_dir:
        write_results(args.out_dir, "partitions_per_node", text, {"command": command, "results": results})


if __name__ == "__main__":
    main()
