"""Model parallelism across hosts: one replica's partitions on 2 emulated hosts (network
namespaces behind a bridge, distbelief_mpi/emulation), the link unshaped or shaped (tc tbf,
e.g. 1gbit); measured speed-up T(1) / T(P) next to the cost model's prediction
(bench/cost_model.py) from layer times and link figures measured in the same run.

    python bench/model_parallel_hosts.py [--models local speech] [--rates none 1gbit]
        [--layouts 2 1,1 2,2] [--rounds 5] [--repeats 5] [--quick] [--out-dir DIR]
    mpiexec ... python bench/model_parallel_hosts.py --worker MODEL    # one measurement (internal)

Layouts are ranks per host: `1,1` = P = 2, one partition on each host; `2,2` = P = 4, two on
each; `2` = P = 2 on one host (the control: shared memory only).

The machine is shared and noisy, so every run measures its own baseline, interleaved: after
warm-up, `repeats` iterations of [the whole network's step on rank 0 alone (T(1); the others
sleep), the partitioned step (T(P)), every layer's one-thread forward + backward and the loss
on rank 0 (the compute part of the prediction, cost_model.layer_steps)], each a few hundred ms
apart; medians over iterations. Before them, rank 0 ping-pongs (bench/machine.py's `pingpong`,
1 KB to 4 MB) with the first rank on the other host ("net": UCX over TCP through the veths and
the bridge) and with another rank on its own host ("host": MPICH shared memory): the cost
model's latency, bandwidth and per-size curve are those of the links in use, in this run.
Rounds repeat every configuration; the table gives medians over rounds. All emulated hosts
share this machine's cores, so the compute model is the one-node one: ranks (one thread each)
time-share the cores (4 ranks on 2 cores run at half speed).
Needs root (namespaces); without, it says why and exits 2.
"""

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))  # machine.py, model_parallel.py, cost_model.py
RESULT_PREFIX = "MODEL_PARALLEL_HOSTS_JSON "
NAME, SUBNET = "cm", "10.234.0"  # emulated hosts: cm (unshaped) 10.234.0.0/24, cm1 (first rate) 10.234.1.0/24, ...
TOLERANCE = 0.25  # |predicted / measured speed-up - 1| the issue accepts
THREADS_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


# ---------------------------------------------------------------- worker (under mpiexec)
def timed_exchanger(comm, dtype):
    """An MpiExchanger that adds up the seconds spent in its exchanges (the wait for the others
    included: imbalance, transfer, progress)."""
    from distbelief_mpi.comm.partition_exchange import MpiExchanger

    class Timed(MpiExchanger):
        seconds = 0.0

        def exchange(self, sends: dict, recv_shapes: dict) -> dict:
            tick = time.perf_counter()
            try:
                return super().exchange(sends, recv_shapes)
            finally:
                self.seconds += time.perf_counter() - tick

    return Timed(comm, dtype)


def host_indices(comm) -> list[int]:
    """Each rank's host as 0, 1, ... in order of first appearance (by processor name)."""
    from mpi4py import MPI

    names = comm.allgather(MPI.Get_processor_name())
    return [list(dict.fromkeys(names)).index(n) for n in names]


def timed(steps: list) -> list[float]:
    """Seconds of each callable, called once each in order."""
    seconds = []
    for step in steps:
        tick = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - tick)
    return seconds


def worker(name: str, repeats: int, quick: bool, pingpong_repeats: int) -> None:
    """Under mpiexec over emulated hosts (P ranks = P partitions): after warm-up and the link
    ping-pongs, `repeats` iterations of [the whole network's step on rank 0 alone (P = 1; the
    others sleep in a barrier), the partitioned step on all, every layer's forward + backward
    and the loss once on rank 0]: T(1), T(P) and the layer times side by side, seconds apart."""
    import cost_model as cm
    import numpy as np
    from machine import PINGPONG_CURVE, pingpong
    from model_parallel import setup, time_steps
    from mpi4py import MPI

    from distbelief_mpi.comm.control import barrier_sleeping

    comm = MPI.COMM_WORLD
    parts, rank, hosts = comm.Get_size(), comm.Get_rank(), host_indices(MPI.COMM_WORLD)
    exchanger = timed_exchanger(comm, np.float32)
    network, model, params, x, y, batch = setup(comm, name, quick, exchanger)
    whole = network.init_params(0) if rank == 0 else None
    whole_grad = np.zeros_like(whole) if rank == 0 else None
    pieces = cm.layer_steps(network, batch, whole) if rank == 0 else []

    def alone() -> tuple[float, list[float]]:
        """Rank 0: one whole step, then every layer and the loss once; the others sleep."""
        t1, layer_s = 0.0, []
        if rank == 0:
            tick = time.perf_counter()
            network.loss_and_grad(whole, x, y, whole_grad)
            t1 = time.perf_counter() - tick
            layer_s = timed(pieces)
        barrier_sleeping(comm)
        return t1, layer_s

    own = cm.layer_steps(network, batch, params, model.subs, model.slices) if parts > 1 else []

    def partition_compute() -> tuple[list[float], list[float]]:
        """Every partition's own layers (forward + backward, no exchange): each rank alone in turn
        (the others sleep), then all at once; per layer the slowest partition (lists of seconds)."""
        alone_s = np.zeros(len(own))
        for turn in range(parts):
            if rank == turn:
                alone_s = np.array(timed(own))
            barrier_sleeping(comm)
        comm.Barrier()
        together_s = np.array(timed(own))
        for seconds in (alone_s, together_s):
            comm.Allreduce(MPI.IN_PLACE, seconds, op=MPI.MAX)
        return alone_s.tolist(), together_s.tolist()

    alone()  # warm-up: JIT, first touch, connections
    partition_compute()
    grad = np.zeros_like(params)  # touched once, reused by every timed step
    time_steps(comm, model, params, x, y, 2, grad=grad)
    links = {}
    other_host = [r for r in range(parts) if hosts[r] != hosts[0]]
    same_host = [r for r in range(1, parts) if hosts[r] == hosts[0]]
    if other_host:
        links["net"] = pingpong(comm, 0, other_host[0], pingpong_repeats, PINGPONG_CURVE)
    if same_host:
        links["host"] = pingpong(comm, 0, same_host[0], pingpong_repeats, PINGPONG_CURVE)
    t1s, tps, sent, exchange_s, layers, alone_s, together_s = [], [], [], [], [], [], []
    for _ in range(repeats):
        t1, layer_s = alone()
        by_alone, by_together = partition_compute()
        alone_s.append(sum(by_alone))
        together_s.append(sum(by_together))
        before = exchanger.seconds
        tp, bytes_sent = time_steps(comm, model, params, x, y, 1, grad=grad)
        t1s.append(t1)
        tps += tp
        sent += bytes_sent
        exchange_s.append(exchanger.seconds - before)
        layers.append(layer_s)
    gathered = comm.gather((statistics.median(sent), statistics.median(exchange_s)), root=0)
    if rank == 0:
        medians = [statistics.median(column) for column in zip(*layers)]
        result = {
            "model": name,
            "parts": parts,
            "hosts": hosts,
            "batch": batch,
            "n_params": network.n_params,
            "t1_s": statistics.median(t1s),
            "step_s": statistics.median(tps),
            "t1s_s": t1s,
            "steps_s": tps,
            "measured_speedup": statistics.median(t1s) / statistics.median(tps),
            "bytes_sent": [g[0] for g in gathered],
            "exchange_s": [g[1] for g in gathered],
            "layer_s": medians[:-1],
            "loss_s": medians[-1],
            # the partitions' own layers + loss, no exchange; per layer the slowest partition, summed
            "compute_alone_s": statistics.median(alone_s),
            "compute_together_s": statistics.median(together_s),
            "links": links,
        }
        print(RESULT_PREFIX + json.dumps(result), flush=True)


# ---------------------------------------------------------------- the model's prediction
def predict(name: str, run: dict, cores: int, curves: bool) -> dict:
    """Predicted T(1), T(P) and speed-up of `run` from its layer times and links: each message
    costs latency + bytes / bandwidth, or (curves) its link's measured ping-pong time at its size."""
    import cost_model as cm
    from model_parallel import models

    from distbelief_mpi.model.network import build_network

    shape, classes, _, layers = models()[name]
    network, batch = build_network(layers, shape, classes), run["batch"]
    inf = {"bandwidth_bytes_per_s": float("inf"), "latency_s": 0.0, "curve": []}
    host, net = run["links"].get("host", inf), run["links"].get("net", inf)
    machine = cm.Machine(
        cores,
        host["bandwidth_bytes_per_s"],
        host["latency_s"],
        partition_per_machine=False,
        hosts=tuple(run["hosts"]),
        net_bandwidth_bytes_per_s=net["bandwidth_bytes_per_s"],
        net_latency_s=net["latency_s"],
        curve=tuple(map(tuple, host["curve"])) if curves else (),
        net_curve=tuple(map(tuple, net["curve"])) if curves else (),
    )
    one = cm.partition_step(network, 1, batch, run["layer_s"], replace(machine, hosts=()), run["loss_s"])
    split = cm.step_parts(network, run["parts"], batch, run["layer_s"], machine, run["loss_s"])
    return {"t1_s": one, "tp_s": sum(split.values()), "speedup": one / sum(split.values()), "split_s": split}


# ---------------------------------------------------------------- driver
def layout_label(layout: list[int]) -> str:
    return "+".join(map(str, layout))


BUSY = 0.5  # mean runnable tasks of others during a run above which it counts as disturbed


def measure(
    hosts, layout: list[int], name: str, repeats: int, quick: bool, calm_s: float = 0.0, tries: int = 1
) -> dict:
    """One run of the worker on `layout` over `hosts`, after waiting up to calm_s for the other
    processes on this machine to quieten. Other processes' runnable tasks are sampled during the
    run ("others"); a run they disturbed (mean > BUSY) is repeated, `tries` runs at most, and the
    least disturbed one counts (every try is kept under "tries")."""
    from machine import OthersMonitor, mpi_result, mpiexec_path, wait_for_calm

    from distbelief_mpi.emulation import mpiexec_argv

    args = ["--worker", name, "--repeats", str(repeats), "--pingpong-repeats", str(4 if quick else 10)]
    attempts = []
    for _ in range(max(1, tries)):
        before = wait_for_calm(calm_s) if calm_s > 0 else None
        with OthersMonitor() as others:
            result = mpi_result(
                sum(layout),
                __file__,
                args + (["--quick"] if quick else []),
                RESULT_PREFIX,
                timeout=900,
                env={**os.environ, **THREADS_ENV},
                launch=mpiexec_argv(hosts, layout, mpiexec_path()),
            )
        attempts.append({**result, "others_before": before, "others": others.mean})
        if others.mean <= BUSY:
            break
    best = min(attempts, key=lambda a: a["others"])
    return {**best, "tries": [{k: a[k] for k in ("others_before", "others", "measured_speedup")} for a in attempts]}


def subnet(base: str, i: int) -> str:
    """The i-th /24 from base "A.B.C": A.B.(C + i)."""
    a, b, c = base.split(".")
    return f"{a}.{b}.{int(c) + i}"


def run_rounds(args, cores: int) -> list[dict]:
    """Every round: per model, every (layout, rate) once; raw runs + predictions."""
    from distbelief_mpi.emulation import EmulatedHosts

    layouts = [[int(n) for n in text.split(",")] for text in args.layouts]
    rates = [None if r == "none" else r for r in args.rates]
    runs = []
    with contextlib.ExitStack() as stack:
        hosts = {
            rate: stack.enter_context(
                EmulatedHosts(2, rate=rate, name=args.name + (str(i) if i else ""), subnet=subnet(args.subnet, i))
            )
            for i, rate in enumerate(dict.fromkeys([None] + rates))
        }
        for round_ in range(args.rounds):
            for name in args.models:
                for layout in layouts:
                    for rate in rates:
                        if len(layout) == 1 and rate is not None:
                            continue  # one host: no network link to shape
                        run = measure(hosts[rate], layout, name, args.repeats, args.quick, args.calm, args.tries)
                        run.update(round=round_, rate=rate, layout=layout)
                        run["predicted"] = predict(name, run, cores, curves=False)
                        run["predicted_curve"] = predict(name, run, cores, curves=True)
                        runs.append(run)
                        log(
                            f"round {round_ + 1}/{args.rounds} {name} {layout_label(layout)} {rate or 'unshaped'}: "
                            f"T(1) {run['t1_s'] * 1e3:.1f} ms, T(P) {run['step_s'] * 1e3:.1f} ms, speed-up "
                            f"{run['measured_speedup']:.2f} (predicted {run['predicted']['speedup']:.2f}, "
                            f"curve {run['predicted_curve']['speedup']:.2f})"
                        )
    return runs


def summarize(runs: list[dict]) -> list[dict]:
    """Per (model, rate, layout): medians over rounds (ms, GB/s, us)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["rate"], layout_label(r["layout"])), []).append(r)
    rows = []
    for (model, rate, layout), rs in groups.items():

        def med(get, scale=1.0, rs=rs):
            values = [v for v in (get(r) for r in rs) if v is not None]
            return statistics.median(values) * scale if values else None

        def link(kind, key, scale):
            return med(lambda run: run["links"][kind][key] if kind in run["links"] else None, scale)

        measured = med(lambda r: r["measured_speedup"])
        predicted, curve = med(lambda r: r["predicted"]["speedup"]), med(lambda r: r["predicted_curve"]["speedup"])
        split = {k: med(lambda r, k=k: r["predicted"]["split_s"][k], 1e3) for k in ("compute", "halo", "gather")}
        rows.append(
            {
                "model": model,
                "batch": rs[0]["batch"],
                "n_params": rs[0]["n_params"],
                "rate": rate or "unshaped",
                "layout": layout,
                "parts": rs[0]["parts"],
                "rounds": len(rs),
                "t1_ms": med(lambda r: r["t1_s"], 1e3),
                "tp_ms": med(lambda r: r["step_s"], 1e3),
                "measured_speedup": measured,
                "measured_speedups": [r["measured_speedup"] for r in rs],
                "predicted_speedup": predicted,
                "error": predicted / measured - 1,
                "predicted_speedup_curve": curve,
                "error_curve": curve / measured - 1,
                "predicted_t1_ms": med(lambda r: r["predicted"]["t1_s"], 1e3),
                "predicted_tp_ms": med(lambda r: r["predicted"]["tp_s"], 1e3),
                "predicted_tp_ms_curve": med(lambda r: r["predicted_curve"]["tp_s"], 1e3),
                "predicted_compute_ms": split["compute"],
                "predicted_comm_ms": split["halo"] + split["gather"],
                "compute_together_ms": med(lambda r: r.get("compute_together_s"), 1e3),
                "compute_alone_ms": med(lambda r: r.get("compute_alone_s"), 1e3),
                "exchange_max_ms": med(lambda r: max(r["exchange_s"]), 1e3),
                "exchange_min_ms": med(lambda r: min(r["exchange_s"]), 1e3),
                "mb_sent": max(rs[0]["bytes_sent"]) / 1e6,
                "net_latency_us": link("net", "latency_s", 1e6),
                "net_gb_per_s": link("net", "bandwidth_bytes_per_s", 1e-9),
                "host_latency_us": link("host", "latency_s", 1e6),
                "host_gb_per_s": link("host", "bandwidth_bytes_per_s", 1e-9),
                "net_curve_us": link_curve(rs, "net"),
                "host_curve_us": link_curve(rs, "host"),
                "others": [r["others"] for r in rs if r.get("others") is not None],
            }
        )
    return rows


def link_curve(runs: list[dict], kind: str) -> list[list[float]]:
    """[[bytes, median one-way us over runs], ...] of a link kind (empty where not measured)."""
    curves = [r["links"][kind]["curve"] for r in runs if kind in r["links"]]
    return (
        [[n, statistics.median(c[i][1] for c in curves) * 1e6] for i, (n, _) in enumerate(curves[0])] if curves else []
    )


def report(rows: list[dict], command: str, cores: int, load: tuple[float, float], quick: bool) -> str:
    from machine import cpu_model

    busy = " **(busy: more runnable processes than cores; ratios are side by side, still noisy)**"
    others = [x for r in rows for x in r["others"]]
    calm = (
        f"; other processes' runnable tasks during each run (mean): median {statistics.median(others):.1f}, "
        f"max {max(others):.1f}"
        if others
        else ""
    )
    lines = [
        "## Model parallelism across hosts" + (" (quick smoke run: figures not meaningful)" if quick else ""),
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}; machine: {cpu_model()}, {cores} cores "
        "shared by every emulated host (one thread per rank)",
        f"- command: `{command}` (niceness {os.nice(0)})",
        f"- load average (1 min) at start / end: {load[0]:.1f} / {load[1]:.1f}"
        + (busy if max(load) > cores else "")
        + calm,
        "- hosts: 2 network namespaces behind a bridge (distbelief_mpi/emulation); between hosts UCX over TCP "
        "(UCX_TLS=tcp,self), within a host MPICH shared memory; `1gbit` = tc tbf on both ends of every host link",
        "- speed-up = T(1) / T(P), interleaved in one run (T(1): the whole network on one rank), medians over "
        "iterations, then over rounds; predicted = bench/cost_model.py with the layer times measured in the same "
        "run and the links from a ping-pong between the exchanging ranks in the same run (net: across hosts, "
        "host: within one); errors = predicted / measured speed-up - 1, bold beyond "
        f"{TOLERANCE:.0%}",
        "",
        "| model | link | P (per host) | T(1) ms | T(P) ms | speed-up measured | predicted: latency + bandwidth "
        "| predicted: per-size curve |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        over = " (ranks > cores)" if r["parts"] > cores else ""
        lines.append(
            f"| {r['model']} ({r['n_params'] / 1e6:.1f}M, batch {r['batch']}) | {r['rate']} | {r['parts']} "
            f"({r['layout']}){over} | {r['t1_ms']:.1f} | {r['tp_ms']:.1f} | **{r['measured_speedup']:.2f}x** | "
            f"{r['predicted_speedup']:.2f}x ({error(r['error'])}) | "
            f"{r['predicted_speedup_curve']:.2f}x ({error(r['error_curve'])}) |"
        )
    lines += [
        "",
        "Where the time of a partitioned step goes (ms, medians; predicted: latency + bandwidth):",
        "",
        "| model | link | P | predicted compute | measured compute: partitions' own layers at once (alone) "
        "| predicted comm | in exchanges: slowest, least partition | T(P) - compute - least in exchanges "
        "| MB sent per partition |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        # with more ranks than cores, "at once" time-shares the cores and overlaps the exchanges' waits
        rest = f"{r['tp_ms'] - r['compute_together_ms'] - r['exchange_min_ms']:.1f}" if r["parts"] <= cores else "-"
        lines.append(
            f"| {r['model']} | {r['rate']} | {r['layout']} | {r['predicted_compute_ms']:.1f} | "
            f"{r['compute_together_ms']:.1f} ({r['compute_alone_ms']:.1f}) | {r['predicted_comm_ms']:.1f} | "
            f"{r['exchange_max_ms']:.1f}, {r['exchange_min_ms']:.1f} | {rest} | {r['mb_sent']:.2f} |"
        )
    lines += ["", "Links as measured in the runs (one-way us by message size, medians over runs):", ""]
    sizes = next((r["net_curve_us"] or r["host_curve_us"] for r in rows if r["net_curve_us"] or r["host_curve_us"]), [])
    lines += [
        "| link | latency us | bandwidth GB/s | " + " | ".join(size_label(n) for n, _ in sizes) + " |",
        "|---|---|---|" + "---|" * len(sizes),
    ]
    for r in rows:
        for kind, name in (("net", f"{r['rate']} between hosts"), ("host", f"shared memory ({r['rate']} run)")):
            if r[f"{kind}_curve_us"]:
                lines.append(
                    f"| {r['model']} {r['layout']}: {name} | {r[f'{kind}_latency_us']:.1f} | "
                    f"{r[f'{kind}_gb_per_s']:.2f} | " + " | ".join(f"{t:.0f}" for _, t in r[f"{kind}_curve_us"]) + " |"
                )
    lines += [
        "",
        "Measured compute: every partition runs its own sub-layers' forward + backward and the loss (no "
        "exchange), all at once, per layer the slowest partition (alone: each by itself in turn). In exchanges: "
        "seconds per step inside `exchange`, waiting for the others included. Per-run figures, every try and "
        "the other processes' load are in model_parallel_hosts.json.",
    ]
    return "\n".join(lines)


def size_label(n: float) -> str:
    return f"{n / (1 << 20):g} MB" if n >= 1 << 20 else f"{n / 1024:g} KB"


def error(e: float) -> str:
    """A relative error, bold beyond the tolerance."""
    return f"**{e * 100:+.0f}%**" if abs(e) > TOLERANCE else f"{e * 100:+.0f}%"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--pingpong-repeats", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=["local", "speech"], choices=["local", "speech"])
    parser.add_argument("--rates", nargs="+", default=["none", "1gbit"], help="none = unshaped; tc rates")
    parser.add_argument("--layouts", nargs="+", help="ranks per host, e.g. 1,1 (default: 2 1,1 2,2; quick: 1,1)")
    parser.add_argument("--rounds", type=int, help="default 5 (quick: 1)")
    parser.add_argument("--repeats", type=int, help="timed steps per run, default 5 (quick: 3)")
    parser.add_argument("--quick", action="store_true", help="batch / 8, 1 round, 3 steps, layout 1,1: a smoke run")
    parser.add_argument("--out-dir", help="write model_parallel_hosts.md and .json here")
    parser.add_argument(
        "--calm",
        type=float,
        default=0.0,
        help="before each run, wait up to this many seconds for other processes to quieten (default 0: no wait)",
    )
    parser.add_argument(
        "--tries",
        type=int,
        default=1,
        help=f"repeat a run that other processes disturbed (> {BUSY} runnable on average) up to this many runs",
    )
    parser.add_argument("--name", default=NAME, help=f"emulated hosts' name prefix (default {NAME}; NAME1 if shaped)")
    parser.add_argument("--subnet", default=SUBNET, help=f"their first /24 (default {SUBNET}; shaped: the next ones)")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.repeats or 5, args.quick, args.pingpong_repeats)
        return 0
    from machine import usable_cores, write_results

    from distbelief_mpi.emulation import unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"model_parallel_hosts: emulated hosts are not available here: {reason}", file=sys.stderr)
        return 2
    args.layouts = args.layouts or (["1,1"] if args.quick else ["2", "1,1", "2,2"])
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.repeats = args.repeats or (3 if args.quick else 5)
    cores, load_start = usable_cores(), os.getloadavg()[0]
    runs = run_rounds(args, cores)
    rows = summarize(runs)
    text = report(rows, " ".join(["python"] + sys.argv), cores, (load_start, os.getloadavg()[0]), args.quick)
    print(text)
    if args.out_dir:
        write_results(args.out_dir, "model_parallel_hosts", text, {"rows": rows, "runs": runs, "cores": cores})
    return 0


if __name__ == "__main__":
    sys.exit(main())
