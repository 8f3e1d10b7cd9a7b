"""Model parallelism: time per minibatch step of one replica split over P partitions (P ranks),
as speed-up T(1) / T(P), and the bytes each partition sends per step: the paper's Fig. 3.

    python bench/model_parallel.py [--parts 1 2] [--repeats 7] [--quick] [--out-dir DIR]
    python bench/model_parallel.py --models local --parts 4 --grids rows 2x2 --rounds 3   # 2-D vs rows
    mpiexec -n P python bench/model_parallel.py --worker MODEL [--grid AxB]   # one measurement (internal)

Models:
  local   a locally connected image network: 1x64x64 -> local 7x7 16 filters -> maxpool 2 ->
          local 5x5 16 filters -> maxpool 2 -> dense 256 -> softmax 10 (7.3M parameters), batch 32
  speech  the paper's speech model shape: 440 -> 4 x 2560 sigmoid -> 8192 softmax (42M), batch 128

Each rank computes with one thread (Numba and BLAS), so P ranks use P cores. A step is the
partitioned forward + backward (model/partitioned.py) with its exchanges over MPI
(comm/partition_exchange.py); P = 1 runs the ordinary whole network. Figures are medians
of `repeats` steps after 2 warm-up steps; every P runs in its own mpiexec, one after another,
in one invocation. With more partitions than cores the ranks time-share the cores: the table
says so, and those points measure oversubscription, not model parallelism.

--grids: image layers in whole rows ("rows") and/or A x B blocks of rows x columns ("AxB",
topology.partition_grid) at every P > 1 they fit; each result carries the bytes the geometry
says (bench/cost_model.bytes_per_partition) next to those sent. --rounds N runs the whole list
of configurations N times, in order, and reports medians over rounds (every round in the JSON).
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))  # machine.py (when run as a worker from elsewhere)
RESULT_PREFIX = "MODEL_PARALLEL_JSON "
TARGETS = {"local": 1.6, "speech": 1.3}  # at P = 2 on a 2-core machine (the issue)


def models():
    from distbelief_mpi.model.spec import LayerSpec

    local = (
        (1, 64, 64),
        10,
        32,
        (
            LayerSpec("local", filters=16, patch=7, stride=1, activation="relu"),
            LayerSpec("maxpool", size=2, stride=2),
            LayerSpec("local", filters=16, patch=5, stride=1, activation="relu"),
            LayerSpec("maxpool", size=2, stride=2),
            LayerSpec("dense", units=256, activation="relu"),
        ),
    )
    speech = ((440,), 8192, 128, tuple(LayerSpec("dense", units=2560, activation="sigmoid") for _ in range(4)))
    return {"local": local, "speech": speech}


def setup(comm, name: str, quick: bool, exchanger=None, grid=None):
    """This rank's partition of model `name` over comm's ranks (P = 1: the whole network):
    (network, model, params, x, y, batch). exchanger: an MpiExchanger (or subclass) over comm;
    grid (A, B): image layers in A x B blocks (None: whole rows)."""
    import numpy as np

    from distbelief_mpi.comm.partition_exchange import MpiExchanger
    from distbelief_mpi.kernels.thread_pool import set_compute_threads
    from distbelief_mpi.model.network import build_network
    from distbelief_mpi.model.partition import split_model
    from distbelief_mpi.model.partitioned import PartitionedNetwork

    set_compute_threads(1)
    shape, classes, batch, layers = models()[name]
    if quick:
        batch = max(4, batch // 8)
    network = build_network(layers, shape, classes)
    parts, part = comm.Get_size(), comm.Get_rank()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + shape).astype(np.float32)
    y = rng.integers(0, classes, batch)
    if parts == 1:
        model, params = network, network.init_params(0)
    else:
        plans, order = split_model(network, parts, grid)
        model = PartitionedNetwork(network, plans, part, exchanger or MpiExchanger(comm, network.dtype))
        params = order.from_canonical(network.init_params(0))[order.offsets[part] : order.offsets[part + 1]]
    return network, model, params, x, y, batch


def time_steps(comm, model, params, x, y, steps: int, between=None, grad=None) -> tuple[list[float], list[int]]:
    """`steps` timed steps (each: barrier, loss_and_grad, the slowest rank's seconds): (seconds,
    bytes this rank sent) per step. between(step) runs before each step, outside the timing.
    grad: the gradient buffer, reused across calls (a fresh one costs its first-touch page
    faults inside the first timed step: 50-70 ms for a speech partition's 84 MB)."""
    import numpy as np
    from mpi4py import MPI

    grad = np.empty_like(params) if grad is None else grad
    times, sent = [], []
    for step in range(steps):
        if between is not None:
            between(step)
        comm.Barrier()
        before = getattr(model, "bytes_sent", 0)
        tick = time.perf_counter()
        model.loss_and_grad(params, x, y, grad)
        times.append(comm.allreduce(time.perf_counter() - tick, op=MPI.MAX))  # a step ends with its slowest part
        sent.append(getattr(model, "bytes_sent", 0) - before)
    return times, sent


def worker(name: str, repeats: int, quick: bool, grid_text: str = "rows") -> None:
    """Under mpiexec -n P: time the partitioned step on every rank; rank 0 prints the result."""
    from cost_model import bytes_per_partition  # bench/cost_model.py
    from machine import pingpong  # bench/machine.py
    from mpi4py import MPI

    from distbelief_mpi.model.spec import parse_grid

    comm = MPI.COMM_WORLD
    grid = parse_grid(grid_text) if comm.Get_size() > 1 else None
    network, model, params, x, y, batch = setup(comm, name, quick, grid=grid)
    times, sent = time_steps(comm, model, params, x, y, repeats + 2)
    all_sent = comm.gather(statistics.median(sent[2:]), root=0)
    # the link the exchanges used, in this run: the cost model's latency and bandwidth (cost_model.validate)
    link = pingpong(comm, 0, 1, repeats=5 if quick else 10) if comm.Get_size() > 1 else None
    if comm.Get_rank() == 0:
        result = {
            "model": name,
            "parts": comm.Get_size(),
            "batch": batch,
            "n_params": network.n_params,
            "step_s": statistics.median(times[2:]),
            "bytes_sent": all_sent,
            "grid": f"{grid[0]}x{grid[1]}" if grid else ("rows" if comm.Get_size() > 1 else "-"),
            "bytes_geometry": bytes_per_partition(network, comm.Get_size(), batch, grid).tolist()
            if comm.Get_size() > 1
            else [0.0],
        }
        print(RESULT_PREFIX + json.dumps({**result, **({"link": link} if link else {})}), flush=True)


def measure(name: str, parts: int, repeats: int, quick: bool, grid: str = "rows") -> dict:
    from machine import mpi_result  # bench/machine.py

    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMBA_NUM_THREADS": "1",
    }
    return mpi_result(
        parts,
        __file__,
        ["--worker", name, "--repeats", str(repeats), "--grid", grid] + (["--quick"] if quick else []),
        RESULT_PREFIX,
        timeout=1800,
        env=env,
    )


def report(results: list[dict], cores: int) -> str:
    from machine import cpu_model  # bench/machine.py

    lines = [
        "## Model parallelism",
        "",
        f"One replica over P partitions, 1 thread per rank; {cores} cores ({cpu_model()}), {datetime.date.today()}",
        "",
        "| model | P | image layers in | step (ms) | speed-up T(1)/T(P) | bytes sent per step, per partition "
        "(geometry) | target at P = 2 |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {r["model"]: r["step_s"] for r in results if r["parts"] == 1}
    for r in results:
        note = " (more ranks than cores)" if r["parts"] > cores else ""
        target = f">= {TARGETS[r['model']]}x" if r["parts"] == 2 else ""
        sent = ", ".join(f"{b / 1e6:.3f} MB" for b in r["bytes_sent"])
        geometry = r.get("bytes_geometry", r["bytes_sent"])
        same = (
            "as the geometry"
            if geometry == r["bytes_sent"]
            else "geometry: " + ", ".join(f"{b / 1e6:.3f}" for b in geometry)
        )
        rounds = f" (median of {len(r['rounds'])} rounds)" if len(r.get("rounds", ())) > 1 else ""
        if r.get("ratio_to_rows"):
            rounds += f"; {r['ratio_to_rows']:.2f}x rows' step, median of per-round ratios"
        lines.append(
            f"| {r['model']} ({r['n_params'] / 1e6:.1f}M, batch {r['batch']}) | {r['parts']} | {r.get('grid', '-')} | "
            f"{r['step_s'] * 1000:.1f}{rounds} | {base[r['model']] / r['step_s']:.2f}x{note} | {sent} ({same}) | "
            f"{target} |"
        )
    loads = [x for r in results for x in r.get("loads", ()) if x is not None]
    if loads:
        lines += [
            "",
            f"Load average (1 min) before each run: median {statistics.median(loads):.1f}, max {max(loads):.1f}.",
        ]
    return "\n".join(lines)


def configurations(models: list[str], parts: list[int], grids: list[str]) -> list[tuple[str, int, str]]:
    """(model, P, grid) to measure: P = 1 once, every P > 1 in each grid whose A x B = P ("rows" fits all)."""
    from distbelief_mpi.model.spec import parse_grid

    def fits(grid: str, p: int) -> bool:
        a, b = parse_grid(grid) or (p, 1 if grid == "rows" else 0)
        return a * b == p

    out = []
    for name in models:
        for p in sorted(set([1] + parts)):
            out += [(name, p, "rows")] if p == 1 else [(name, p, g) for g in grids if fits(g, p)]
    return out


def median_of_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Per configuration: its first round's result with step_s the median over rounds, all rounds
    kept, and ratio_to_rows: the median over rounds of its step / whole rows' step at the same P
    in the same round (None for rows itself or when rows was not measured)."""
    out = []
    for index, runs in enumerate(zip(*rounds)):
        first = runs[0]
        rows = next(
            (
                i
                for i, r in enumerate(rounds[0])
                if (r["model"], r["parts"], r.get("grid")) == (first["model"], first["parts"], "rows")
            ),
            None,
        )
        ratios = None
        if rows is not None and rows != index and first["parts"] > 1:
            ratios = statistics.median(run[index]["step_s"] / run[rows]["step_s"] for run in rounds)
        out.append(
            {
                **first,
                "step_s": statistics.median(r["step_s"] for r in runs),
                "rounds": [r["step_s"] for r in runs],
                "loads": [r.get("load_before") for r in runs],
                "ratio_to_rows": ratios,
            }
        )
    return out


def plot(results: list[dict], path: Path) -> None:
    """Speed-up vs partitions, one line per model, as the paper's Fig. 3."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == name and r.get("grid", "rows") in ("rows", "-")]
        base = next(r["step_s"] for r in rows if r["parts"] == 1)
        ax.plot([r["parts"] for r in rows], [base / r["step_s"] for r in rows], marker="o", label=name)
    top = max(r["parts"] for r in results)
    ax.plot([1, top], [1, top], color="grey", linestyle=":", label="linear")
    ax.set_xticks(sorted({r["parts"] for r in results}))
    ax.set_xlabel("partitions per replica (ranks)")
    ax.set_ylabel("speed-up over 1 partition")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+", default=["local", "speech"], choices=["local", "speech"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="batch / 8 and 3 repeats: a smoke run")
    parser.add_argument(
        "--grids", nargs="+", default=["rows"], help='image layers in "rows" and/or "AxB" blocks (A x B = P)'
    )
    parser.add_argument("--grid", default="rows", help=argparse.SUPPRESS)  # a worker's
    parser.add_argument("--rounds", type=int, default=1, help="measure every configuration this many times, in turn")
    parser.add_argument("--out-dir", help="write NAME.md, NAME.json and NAME.png here")
    parser.add_argument("--name", default="model_parallel", help="the results' file stem (default model_parallel)")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.repeats, args.quick, args.grid)
        return
    repeats = 3 if args.quick else args.repeats
    rounds = []
    for _ in range(args.rounds):
        rounds.append([])
        for name, parts, grid in configurations(args.models, args.parts, args.grids):
            load = os.getloadavg()[0]  # other processes share these cores: kept with the result
            rounds[-1].append({**measure(name, parts, repeats, args.quick, grid), "load_before": load})
            step_ms = rounds[-1][-1]["step_s"] * 1000
            print(f"{name} P={parts} {grid}: {step_ms:.1f} ms", file=sys.stderr, flush=True)
    results = median_of_rounds(rounds)
    from machine import usable_cores  # bench/machine.py

    text = report(results, usable_cores())
    print(text)
    if args.out_dir:  # the .json is what the cost model checks itself against
        from machine import write_results  # bench/machine.py

        stem = args.name
        out = write_results(args.out_dir, stem, text + f"\n\n![speed-up vs partitions]({stem}.png)", results)
        plot(results, out / f"{stem}.png")


if __name__ == "__main__":
    main()
