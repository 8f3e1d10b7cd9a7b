"""Parameter-server bandwidth: push + fetch of the whole parameter vector vs a plain memory copy.

    mpiexec -n S+1 python bench/ps_bandwidth.py --shards S [--params 41_800_000] [--repeats 5]
                                                [--rule adagrad|sgd] [--threads T] [--chunk C] [--out FILE]
    python bench/ps_bandwidth.py --all [--quick] [--out FILE]     # runs S = 1, 2, 4 and prints one table
    python bench/ps_bandwidth.py --kernels [--threads T]          # the shard's update kernels alone

Ranks 0..S-1 run the real Shard serve loop (comm/param_server.py windows, roles/downpour/shard.py);
rank S is one replica that, per repeat and interleaved so that all three see the same load:

  memcpy   np.copyto between two preallocated float32 arrays of n_params (the baseline)
  fetch    ReplicaEndpoint.fetch of every shard's slice into one (n_params,) float32 vector
  push     ReplicaEndpoint.try_push of a full gradient to every shard (slot claim + Put + flush
           + header words + post). This is the TRANSFER figure: when it returns, the bytes
           are in the shards' landing slots.
  applied  push until every shard has consumed it (the slot's STATE has moved on from the
           posted value, polled by the replica): transfer + the shard noticing the push
           (serve-loop sleep backoff, up to 2 ms) + the server update (finite check and rule,
           Adagrad or SGD, one fused pass) + the replica's poll.
  put only a diagnostic: the same Puts (flushed) into landing slot 0 but no claim, header or
           post, so no shard wakes up to apply: transfer with no server update running
           beside it (with one replica and its pushes applied, nobody else writes the slot).

Shards time their side of every push (wrapping the rule kernels in this process only), so
the server update is reported apart from memory movement. Timestamps are time.perf_counter
(CLOCK_MONOTONIC, comparable across processes on one machine). GB/s = bytes of the
parameter vector (4 * n_params) / seconds, for every row, memcpy included. Targets on one
node: push and fetch >= 0.5x memcpy (issue 12); push until applied >= 0.4x memcpy with one
shard, and the server update (finite check + rule) within 1.25x of its memory-bandwidth bound
(issue 16). The bound: the bytes the update must move (SGD reads params and grad and writes
params, 3 arrays; Adagrad also reads and writes its accumulators, 5) at the rate of the
memcpy of the same run (which moves 2 arrays): (arrays / 2) x the memcpy's time.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
from machine import (  # bench/machine.py (bench/ is
    cpu_model,
    launcher_flags,
    mpi_library_line,
    mpiexec_path,
    usable_cores,  # on sys.path as a script)
)

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)

SPEECH_PARAMS = 41_800_000  # the paper's speech model, ~42M float32 (bench/kernels.py [1])
QUICK_PARAMS = 4_000_000
RESULT_PREFIX = "PS_BANDWIDTH_JSON "
TAG_SHARD_TIMES = 201
WARMUP_ROUNDS = 2  # push + fetch rounds before timing: page faults, both buffers touched
TARGET = 0.5
TARGET_APPLIED = 0.4  # push until applied, 1 shard, vs memcpy
TARGET_APPLY_BOUND = 1.25  # the server update's time vs its memory-bandwidth bound
RULE_ARRAYS = {"sgd": 3, "adagrad": 5}  # arrays of n_params each the update reads or writes


# ---------------------------------------------------------------- machine description


def header_lines(command: str) -> list[str]:
    return [
        f"date     {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"machine  {cpu_model()}, {usable_cores()} usable cores ({os.cpu_count()} logical CPUs), "
        f"{platform.system()} {platform.release()}",
        f"mpi      {mpi_library_line()}",
        f"python   {platform.python_version()}, numpy {np.__version__}",
        f"command  {command}",
    ]


def oversubscription_note(ranks: int, cores: int) -> str:
    if ranks <= cores:
        return f"{ranks} ranks on {cores} cores: one core per rank"
    return (
        f"{ranks} ranks on {cores} cores: OVERSUBSCRIBED, the shards time-share the cores with "
        f"each other and the replica (idle shards sleep, so transfers are not starved, but "
        f"server updates of different shards cannot all run at once)"
    )


def gbps(n_bytes: int, seconds: float) -> float:
    return n_bytes / seconds / 1e9 if seconds > 0 else float("inf")


# ---------------------------------------------------------------- one MPI run (worker mode)
def shard_main(world, windows, shard_id, ranges, rule, seed, threads=1):
    """The real Shard serve loop, with its update kernels and _apply_one timed; `threads`
    compute threads, as topology.threads_per_rank gives a shard in a job."""
    import distbelief_mpi.roles.downpour.shard as shard_mod
    from distbelief_mpi.comm.control import barrier_sleeping
    from distbelief_mpi.comm.messages import Messenger
    from distbelief_mpi.config import Optimizer
    from distbelief_mpi.kernels.thread_pool import set_compute_threads

    set_compute_threads(threads)  # as the trainer does: Numba's default is every core
    times = {"start": [], "rule": [], "end": []}

    def timed(fn, key):
        def wrapper(*args):
            t0 = time.perf_counter()
            out = fn(*args)
            times[key][-1] += time.perf_counter() - t0
            return out

        return wrapper

    class TimedShard(shard_mod.Shard):
        # A push's kernel calls (one per landed run of chunks) are summed into one "rule" time.
        def _verdict(self, push):
            times["start"].append(time.perf_counter())  # the push (its first chunk) has been noticed
            times["rule"].append(0.0)
            return super()._verdict(push)

        def _finish(self, push):
            super()._finish(push)
            times["end"].append(time.perf_counter())  # published and released

    start, stop = ranges[shard_id]
    initial = np.random.default_rng(seed + shard_id).standard_normal(stop - start).astype(np.float32)
    shard = TimedShard(windows, shard_id, Optimizer(algorithm="downpour", server_rule=rule), initial)
    shard.warm_up()  # untimed: original kernels, compiled/loaded
    shard_mod.adagrad_step = timed(shard_mod.adagrad_step, "rule")  # finite check + rule, fused
    shard_mod.sgd_step = timed(shard_mod.sgd_step, "rule")
    barrier_sleeping(world)
    shard.serve(Messenger(world))
    world.send(
        {"shard_id": shard_id, "version": shard.version, **times}, dest=world.Get_size() - 1, tag=TAG_SHARD_TIMES
    )


def replica_main(world, windows, n_shards, ranges, n_params, repeats, chunk):
    from distbelief_mpi.comm.control import Backoff, barrier_sleeping
    from distbelief_mpi.comm.messages import DONE, Messenger, ReplicaDone
    from distbelief_mpi.comm.replica_endpoint import ReplicaEndpoint

    endpoint = ReplicaEndpoint(windows, 0, chunk_elements=chunk)
    rng = np.random.default_rng(1234)
    grad = (rng.standard_normal(n_params) * 1e-3).astype(np.float32)  # finite: never rejected
    fetched = np.zeros(n_params, np.float32)  # zeros(): touched now, not on the first fetch
    src = rng.standard_normal(n_params).astype(np.float32)
    dst = np.zeros(n_params, np.float32)
    pieces = [(s, grad[a:b], fetched[a:b]) for s, (a, b) in enumerate(ranges)]
    barrier_sleeping(world)

    def wait_applied():
        # Poll with short sleeps, not a hot spin: the shards need the cores to apply.
        for s in range(n_shards):
            wait = Backoff(first=5e-6, limit=100e-6)
            while not endpoint.slot_free(s):
                wait.sleep()

    def do_push(chunks: bool):
        endpoint.chunk_elements = chunk if chunks else 0
        posted = []
        t0 = time.perf_counter()
        for s, g, _ in pieces:
            if not endpoint.try_push(s, g, 0, 1):
                raise RuntimeError(f"slot on shard {s} busy at the start of a push")
            posted.append(time.perf_counter())
        t1 = time.perf_counter()
        wait_applied()
        t2 = time.perf_counter()
        return t0, t1, t2, posted

    def do_put_only():
        t0 = time.perf_counter()
        for s, g, _ in pieces:
            windows.put_slot(s, 0, g)  # slot 0, unclaimed: see "put only" above
        return time.perf_counter() - t0

    def do_fetch():
        t0 = time.perf_counter()
        versions = [endpoint.fetch(s, out) for s, _, out in pieces]
        return time.perf_counter() - t0, versions

    for _ in range(WARMUP_ROUNDS):
        do_push(True)
        do_push(False)
        do_fetch()
        np.copyto(dst, src)

    rows = []
    for _ in range(repeats):
        time.sleep(5e-3)  # let the shards fall back to their longest idle sleep, as between real pushes
        m0 = time.perf_counter()
        np.copyto(dst, src)
        memcpy = time.perf_counter() - m0
        t_fetch, versions = do_fetch()
        t_put_only = do_put_only()
        time.sleep(5e-3)
        t0, t1, t2, _ = do_push(True)  # in chunks (unless --chunk 0)
        time.sleep(5e-3)
        w0, w1, w2, _ = do_push(False)  # whole, as before chunked pushes: side by side
        rows.append(
            {
                "memcpy": memcpy,
                "fetch": t_fetch,
                "put_only": t_put_only,
                "push_start": t0,
                "push": t1 - t0,
                "applied": t2 - t0,
                "whole_start": w0,
                "push_whole": w1 - w0,
                "applied_whole": w2 - w0,
                "versions": versions,
            }
        )
    _, final_versions = do_fetch()
    expected = 2 * (WARMUP_ROUNDS + repeats)
    if final_versions != [expected] * n_shards:
        raise RuntimeError(f"shard versions {final_versions}, expected {expected} each")
    if not np.isfinite(fetched).all():
        raise RuntimeError("fetched parameters are not finite")

    Messenger(world).send_to_all(DONE, ReplicaDone(0), range(n_shards))
    shard_times = sorted(
        (world.recv(source=s, tag=TAG_SHARD_TIMES) for s in range(n_shards)), key=lambda r: r["shard_id"]
    )
    return rows, shard_times, endpoint.fetch_retries


def summarize(rows, shard_times, fetch_retries, n_params, n_shards, repeats, rule, world_size, chunk):
    n_bytes = 4 * n_params
    med = lambda xs: statistics.median(xs)  # noqa: E731
    keys = ("memcpy", "fetch", "push", "applied", "push_whole", "applied_whole", "put_only")
    t = {key: med([r[key] for r in rows]) for key in keys}
    best = {key: min(r[key] for r in rows) for key in keys}
    # Server side, per timed push: the shards saw 2 pushes per warm-up round and per repeat,
    # the one in chunks then the whole one; each figure is the slowest shard's.
    for suffix, first, start_key in (("", 0, "push_start"), ("_whole", 1, "whole_start")):
        notice, rule_t, apply_total, applied_server = [], [], [], []
        for k, row in enumerate(rows):
            i = 2 * (WARMUP_ROUNDS + k) + first
            notice.append(max(st["start"][i] for st in shard_times) - row[start_key])
            rule_t.append(max(st["rule"][i] for st in shard_times))
            apply_total.append(max(st["end"][i] - st["start"][i] for st in shard_times))
            applied_server.append(max(st["end"][i] for st in shard_times) - row[start_key])
        t.update(
            {
                "notice_max" + suffix: med(notice),
                "rule" + suffix: med(rule_t),
                "apply" + suffix: med(apply_total),
                "applied_server" + suffix: med(applied_server),
            }
        )
    timed = slice(2 * WARMUP_ROUNDS, None)
    per_shard = [
        {
            "shard_id": st["shard_id"],
            "rule": med(st["rule"][timed][0::2]),
            "rule_whole": med(st["rule"][timed][1::2]),
            "apply": med([e - s for s, e in zip(st["start"][timed][0::2], st["end"][timed][0::2])]),
        }
        for st in shard_times
    ]
    ratio = {
        "fetch": t["memcpy"] / t["fetch"],
        "push": t["memcpy"] / t["push"],
        "applied": t["memcpy"] / t["applied"],
        "applied_whole": t["memcpy"] / t["applied_whole"],
        "round_trip": 2 * t["memcpy"] / (t["push"] + t["fetch"]),
        "round_trip_applied": 2 * t["memcpy"] / (t["applied"] + t["fetch"]),
        "put_only": t["memcpy"] / t["put_only"],
    }
    # The update of the slowest shard against the bound of its slice's bytes (1/S of them).
    bound = RULE_ARRAYS[rule] / 2 * t["memcpy"] / n_shards
    return {
        "shards": n_shards,
        "ranks": world_size,
        "cores": usable_cores(),
        "params": n_params,
        "bytes": n_bytes,
        "repeats": repeats,
        "rule": rule,
        "seconds": t,
        "best_seconds": best,
        "gbps": {k: gbps(n_bytes, v) for k, v in t.items() if k in keys},
        "ratio_to_memcpy": ratio,
        "meets_target": ratio["fetch"] >= TARGET and ratio["push"] >= TARGET,
        "target": TARGET,
        "rule_bound_seconds": bound,
        "rule_vs_bound": t["rule_whole"] / bound,  # one kernel call over the whole push
        "rule_chunks_vs_bound": t["rule"] / bound,
        "meets_apply_bound": t["rule_whole"] / bound <= TARGET_APPLY_BOUND,
        "chunk": chunk,
        "meets_applied": ratio["applied"] >= TARGET_APPLIED,
        "per_shard": per_shard,
        "fetch_retries": fetch_retries,
        "raw_seconds": [{k: r[k] for k in keys} for r in rows],
    }


def format_run(res) -> str:
    t, g, r, b = res["seconds"], res["gbps"], res["ratio_to_memcpy"], res["best_seconds"]
    mb = res["bytes"] / 1e6

    def row(label, key, extra=""):
        ratio = t["memcpy"] / t[key]
        return (
            f"  {label:<27}{t[key] * 1e3:8.2f} ms {g[key]:6.2f} GB/s {ratio:5.2f}x  "
            f"(best {b[key] * 1e3:7.2f} ms){extra}"
        )

    chunks = f"in chunks of {res['chunk']:,}" if res["chunk"] else "whole (--chunk 0)"
    lines = [
        f"shards {res['shards']}: {res['params']:,} float32 = {mb:.1f} MB, {res['rule']} rule, "
        f"median of {res['repeats']} (best = fastest repeat); "
        f"{oversubscription_note(res['ranks'], res['cores'])}",
        f"  {'':<27}{'median':>11} {'GB/s':>11} {'ratio':>6}",
        row("memcpy (np.copyto)", "memcpy"),
        row("fetch (all shards)", "fetch", f"  {res['fetch_retries']} seqlock retries"),
        row("push, transfer", "push", f"  {chunks}"),
        row("push until applied", "applied", f"  server-side end {t['applied_server'] * 1e3:.2f} ms"),
        row("push whole, transfer", "push_whole"),
        row("push whole until applied", "applied_whole", f"  server-side end {t['applied_server_whole'] * 1e3:.2f} ms"),
        row("put only (diagnostic)", "put_only", "  no header: no apply runs beside it"),
        f"    slowest shard per push, {chunks}: opened {t['notice_max'] * 1e3:.2f} ms after the push began, "
        f"check + {res['rule']} rule {t['rule'] * 1e3:.2f} ms (summed over its calls), open for "
        f"{t['apply'] * 1e3:.2f} ms",
        f"    slowest shard per push, whole: opened {t['notice_max_whole'] * 1e3:.2f} ms after the push began, "
        f"check + {res['rule']} rule {t['rule_whole'] * 1e3:.2f} ms, open for {t['apply_whole'] * 1e3:.2f} ms",
        f"  server update (one call, whole push) vs its memory-bandwidth bound ({RULE_ARRAYS[res['rule']]} arrays "
        f"at the memcpy's rate, {res['rule_bound_seconds'] * 1e3:.2f} ms): {res['rule_vs_bound']:.2f}x "
        f"(in chunks {res['rule_chunks_vs_bound']:.2f}x), target <= {TARGET_APPLY_BOUND}x: "
        f"{'MET' if res['meets_apply_bound'] else 'MISSED'}",
        f"  push until applied >= {TARGET_APPLIED}x memcpy: {r['applied']:.2f}x "
        f"{'MET' if res['meets_applied'] else 'MISSED'} (whole: {r['applied_whole']:.2f}x)"
        + ("" if res["shards"] == 1 else " (the target is for 1 shard)"),
        f"  round trip push+fetch vs 2x memcpy: {r['round_trip']:.2f}x transfer, "
        f"{r['round_trip_applied']:.2f}x with the apply",
        f"  target >= {res['target']}x memcpy for push (transfer) and fetch: "
        f"{'MET' if res['meets_target'] else 'MISSED'}",
    ]
    for ps in res["per_shard"]:
        lines.append(
            f"    shard {ps['shard_id']}: check + rule {ps['rule'] * 1e3:.2f} ms in chunks, "
            f"{ps['rule_whole'] * 1e3:.2f} ms whole; open for {ps['apply'] * 1e3:.2f} ms in chunks"
        )
    return "\n".join(lines)


def worker(args) -> int:
    from mpi4py import MPI

    from distbelief_mpi.comm.control import barrier_sleeping
    from distbelief_mpi.comm.param_server import ParamServerWindows
    from distbelief_mpi.comm.replica_endpoint import PUSH_CHUNK
    from distbelief_mpi.layout import shard_ranges

    world = MPI.COMM_WORLD
    rank, size, n_shards = world.Get_rank(), world.Get_size(), args.shards
    if size != n_shards + 1:
        if rank == 0:
            print(
                f"error: --shards {n_shards} needs mpiexec -n {n_shards + 1} (S shards + 1 replica), got {size} ranks",
                file=sys.stderr,
            )
        return 2
    ranges = shard_ranges(args.params, n_shards)
    shard_id = rank if rank < n_shards else -1
    windows = ParamServerWindows(world, list(range(n_shards)), ranges, 1, shard_id)
    result = None
    if shard_id >= 0:
        shard_main(world, windows, shard_id, ranges, args.rule, seed=0, threads=args.threads)
    else:
        chunk = PUSH_CHUNK if args.chunk is None else args.chunk
        rows, shard_times, retries = replica_main(world, windows, n_shards, ranges, args.params, args.repeats, chunk)
        result = summarize(rows, shard_times, retries, args.params, n_shards, args.repeats, args.rule, size, chunk)
    barrier_sleeping(world)
    windows.close()
    if result is not None:
        if not args.quiet:
            print("\n".join(header_lines(f"mpiexec -n {size} " + " ".join([sys.executable] + sys.argv))))
            print(format_run(result))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------- driver mode (--all)
def driver(args) -> int:
    import mpi4py

    mpi4py.rc.initialize = False  # the driver only launches mpiexec; it is no MPI process
    params = args.params or (QUICK_PARAMS if args.quick else SPEECH_PARAMS)
    repeats = args.repeats or (3 if args.quick else 5)
    mpiexec = mpiexec_path()
    print("\n".join(header_lines(" ".join([sys.executable] + sys.argv))))
    print(
        f"sizes    {params:,} float32 params = {4 * params / 1e6:.1f} MB per push and per fetch; "
        f"{repeats} repeats (+{WARMUP_ROUNDS} warm-up rounds); rule {args.rule}"
    )
    results, failed = [], []
    for n_shards in (1, 2, 4):
        command = [
            "timeout",
            "-k",
            "10",
            str(args.timeout),
            mpiexec,
            *launcher_flags(mpiexec),
            "-n",
            str(n_shards + 1),
            sys.executable,
            os.path.abspath(__file__),
            "--shards",
            str(n_shards),
            "--params",
            str(params),
            "--repeats",
            str(repeats),
            "--rule",
            args.rule,
            "--threads",
            str(args.threads),
            *(["--chunk", str(args.chunk)] if args.chunk is not None else []),
            "--quiet",
        ]
        print(f"\n$ {' '.join(command)}", flush=True)
        started = time.perf_counter()
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": os.path.abspath(REPO)}
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if done.returncode != 0 or not lines:
            why = "timed out" if done.returncode in (124, 137) else f"exit {done.returncode}"
            print(f"FAILED ({why})\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")
            failed.append(n_shards)
            continue
        result = json.loads(lines[-1][len(RESULT_PREFIX) :])
        result["command"], result["wall_seconds"] = " ".join(command), time.perf_counter() - started
        results.append(result)
        print(format_run(result) + f"\n  (run took {result['wall_seconds']:.1f} s)", flush=True)

    if results:
        print(
            f"\nsummary: GB/s of the {4 * params / 1e6:.1f} MB vector (ratio to memcpy in the same run); "
            f"'push' = transfer (Put + header), 'applied' = until every shard has applied it (in chunks; "
            f"'whole': the push landing whole, right after it)"
        )
        head = (
            f"{'shards':>6} {'ranks/cores':>11} {'memcpy':>7} {'fetch':>14} {'push':>14} {'applied':>14} {'whole':>14} "
            f"{'rule ms':>8} {'opened ms':>9} {'>=0.5x':>6}"
        )
        print(head)
        for res in results:
            g, r, t = res["gbps"], res["ratio_to_memcpy"], res["seconds"]

            def cell(k, g=g, r=r):
                return f"{g[k]:6.2f} ({r[k]:.2f}x)"

            print(
                f"{res['shards']:>6} {res['ranks']:>5}/{res['cores']:<5} {g['memcpy']:7.2f} {cell('fetch'):>14} "
                f"{cell('push'):>14} {cell('applied'):>14} {cell('applied_whole'):>14} "
                f"{t['rule'] * 1e3:8.2f} {t['notice_max'] * 1e3:9.2f} "
                f"{'yes' if res['meets_target'] else 'NO':>6}"
            )
        if any(res["ranks"] > res["cores"] for res in results):
            print(
                f"note: runs with more ranks than the {results[0]['cores']} cores time-share them "
                f"(see the per-run lines)."
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"results": results, "failed": failed}, f, indent=1)
    return 1 if failed else 0


# ---------------------------------------------------------------- between hosts (--hosts)
# Shard (rank 0) on emulated host h1, replica (rank 1) on h2; rounds interleave an MPI ping-pong
# between the two ranks with the parameter-server transfers, so each ratio compares figures
# measured moments apart on the same link.
HOSTS_PREFIX = "PS_HOSTS_JSON "
# UCX's TCP segments (UCX_TCP_TX_SEG_SIZE / RX_SEG_SIZE, 8 KiB by default): an MPI_Get is served
# by the target in segments, each a separate send from its progress loop; measured on emulated
# hosts, 256k segments take an unshaped 167 MB fetch from ~0.4x to ~0.9x the ping-pong rate, but
# at 1 Gbit/s they raise the small-message round trip from ~20 us to ~2 ms: UCX's default is kept.
UCX_SEG = "default"
HOSTS_TARGET_BW = 0.8  # push and fetch >= 0.8x the ping-pong's bandwidth
HOSTS_TARGET_LAT = 3.0  # small push until applied <= 3 x MPI round trip + the shard's apply time
PINGPONG_SMALL = 8  # bytes: the round-trip message (one float64 word, like the control words)
PINGPONG_LARGE = 16 << 20  # bytes: the bandwidth message (many TCP windows, beyond the shaper's burst)
SMALL_PUSH = 64  # float32: the small push (a 64-parameter shard of its own, as ps_latency.py)


def link_pingpong(comm, peer: int, sizes: dict[str, tuple[int, int]]) -> dict[str, list[float]]:
    """Blocking Send/Recv round trips with `peer`: {label: [seconds per round trip, ...]} for
    every (bytes, round trips) in sizes, after one untimed round trip each."""
    first = comm.Get_rank() < peer
    out = {}
    for label, (n, count) in sizes.items():
        buf, times = np.zeros(n, np.uint8), []
        for i in range(count + 1):
            tick = time.perf_counter()
            if first:
                comm.Send(buf, peer, tag=7)
                comm.Recv(buf, peer, tag=7)
            else:
                comm.Recv(buf, peer, tag=7)
                comm.Send(buf, peer, tag=7)
            if i:
                times.append(time.perf_counter() - tick)
        out[label] = times
    comm.Barrier()
    return out


def hosts_worker(args) -> int:
    """World rank 0: the shard (a big one of args.params, then a small one of SMALL_PUSH, both
    the real serve loop); rank 1: the replica, which times every figure."""
    from mpi4py import MPI

    import distbelief_mpi.roles.downpour.shard as shard_mod
    from distbelief_mpi.comm.control import Backoff, barrier_sleeping
    from distbelief_mpi.comm.messages import DONE, Messenger, ReplicaDone
    from distbelief_mpi.comm.param_server import ParamServerWindows
    from distbelief_mpi.comm.replica_endpoint import ReplicaEndpoint
    from distbelief_mpi.config import Optimizer

    world = MPI.COMM_WORLD
    rank, n = world.Get_rank(), args.params
    if world.Get_size() != 2:
        raise SystemExit("--hosts-worker needs exactly 2 ranks (shard on h1, replica on h2)")
    messenger = Messenger(world)
    big = ParamServerWindows(world, [0], [(0, n)], 1, 0 if rank == 0 else -1)
    small = ParamServerWindows(world, [0], [(0, SMALL_PUSH)], 1, 0 if rank == 0 else -1)
    sizes = {"small": (PINGPONG_SMALL, args.round_trips), "large": (PINGPONG_LARGE, args.large_round_trips)}
    rounds = 1 + args.repeats  # round 0 is a warm-up

    if rank == 0:
        times: dict[str, list[tuple[float, float]]] = {"big": [], "small": []}  # (noticed, released)

        class TimedShard(shard_mod.Shard):
            def __init__(self, *a, key, **kw):
                super().__init__(*a, **kw)
                self.key = key

            def _verdict(self, push):
                self.noticed = time.perf_counter()
                return super()._verdict(push)

            def _finish(self, push):
                super()._finish(push)
                times[self.key].append((self.noticed, time.perf_counter()))

        rule = Optimizer(algorithm="downpour", server_rule=args.rule)
        rng = np.random.default_rng(0)
        shards = {
            "big": TimedShard(big, 0, rule, rng.standard_normal(n).astype(np.float32), key="big"),
            "small": TimedShard(small, 0, rule, np.zeros(SMALL_PUSH, np.float32), key="small"),
        }
        shards["big"].warm_up()
        barrier_sleeping(world)
        for _ in range(rounds):
            link_pingpong(world, 1, sizes)
            shards["big"].serve(messenger)  # until the replica says done
            shards["small"].serve(messenger)
        world.send(times, dest=1, tag=TAG_SHARD_TIMES)
        result = None
    else:
        big_ep, small_ep = ReplicaEndpoint(big, 0), ReplicaEndpoint(small, 0)
        rng = np.random.default_rng(1234)
        grad = (rng.standard_normal(n) * 1e-3).astype(np.float32)
        fetched = np.zeros(n, np.float32)
        small_grad, small_out = np.full(SMALL_PUSH, 1e-3, np.float32), np.zeros(SMALL_PUSH, np.float32)
        barrier_sleeping(world)
        rows = []
        for r in range(rounds):
            link = link_pingpong(world, 0, sizes)
            time.sleep(5e-3)  # the shard back in its sleeping wait, as between real pushes
            t0 = time.perf_counter()
            big_ep.fetch(0, fetched)
            t_fetch = time.perf_counter() - t0
            time.sleep(5e-3)
            t0 = time.perf_counter()
            if not big_ep.try_push(0, grad, 0, 1):
                raise RuntimeError("the big shard's slot is busy at the start of a push")
            t1 = time.perf_counter()
            wait = Backoff(first=5e-6, limit=100e-6)
            while not big_ep.slot_free(0):
                wait.sleep()
            t2 = time.perf_counter()
            messenger.send(DONE, ReplicaDone(0), 0)
            small_push, small_start = [], []
            for _ in range(args.small_pushes):
                time.sleep(1e-3)  # the shard asleep in its wait when the push comes, as in a real job
                tick = time.perf_counter()
                small_ep.push(0, small_grad, 0, 1)
                while not small_ep.slot_free(0):  # applied (polled back to back: each is a round trip)
                    pass
                small_push.append(time.perf_counter() - tick)
                small_start.append(tick)
            small_ep.fetch(0, small_out)
            messenger.send(DONE, ReplicaDone(0), 0)
            if r:
                rows.append(
                    {
                        "pingpong_rtt": statistics.median(link["small"]),
                        "pingpong_large": statistics.median(link["large"]),
                        "fetch": t_fetch,
                        "push": t1 - t0,
                        "applied": t2 - t0,
                        "push_start": t0,
                        "small_push": small_push,
                        "small_start": small_start,
                    }
                )
        times = world.recv(source=0, tag=TAG_SHARD_TIMES)
        if not (np.isfinite(fetched).all() and np.isfinite(small_out).all()):
            raise RuntimeError("fetched parameters are not finite")
        result = hosts_summary(rows, times, args, big_ep.fetch_retries)
    barrier_sleeping(world)
    small.close()
    big.close()
    if result is not None:
        print(HOSTS_PREFIX + json.dumps(result), flush=True)
    return 0


def hosts_summary(rows, times, args, fetch_retries) -> dict:
    med = statistics.median
    n_bytes = 4 * args.params
    big_times = times["big"][1:]  # the warm-up round's push first
    small_times = times["small"][args.small_pushes :]
    apply_big = [end - start for start, end in big_times]
    notice_big = [start - row["push_start"] for (start, _), row in zip(big_times, rows)]
    small_lat = [x for row in rows for x in row["small_push"]]
    small_apply = [end - start for start, end in small_times]
    starts = [x for row in rows for x in row["small_start"]]
    # The clocks of the two hosts are one machine's CLOCK_MONOTONIC (namespaces share it).
    small_notice = [start - tick for (start, _), tick in zip(small_times, starts)]
    link_s = med([row["pingpong_large"] for row in rows]) / 2  # one way
    rtt = med([row["pingpong_rtt"] for row in rows])
    link_bps = PINGPONG_LARGE / max(link_s - rtt / 2, 1e-9)
    t = {k: med([row[k] for row in rows]) for k in ("fetch", "push", "applied")}
    gbps_ = {k: gbps(n_bytes, v) for k, v in t.items()}
    ratio = {k: gbps_[k] * 1e9 / link_bps for k in gbps_}
    # Each round's ratio against that round's own ping-pong: the spread of the side-by-side figure.
    per_round = [
        {
            k: (n_bytes / row[k]) / (PINGPONG_LARGE / max(row["pingpong_large"] / 2 - row["pingpong_rtt"] / 2, 1e-9))
            for k in ("fetch", "push", "applied")
        }
        for row in rows
    ]
    small = {
        "median_s": med(small_lat),
        "p90_s": statistics.quantiles(small_lat, n=10)[-1] if len(small_lat) > 1 else small_lat[0],
        "apply_s": med(small_apply),
        "notice_s": med(small_notice),
        "pushes": len(small_lat),
    }
    bound = HOSTS_TARGET_LAT * rtt + small["apply_s"]
    return {
        "params": args.params,
        "bytes": n_bytes,
        "rule": args.rule,
        "repeats": args.repeats,
        "pingpong": {
            "rtt_s": rtt,
            "small_bytes": PINGPONG_SMALL,
            "large_bytes": PINGPONG_LARGE,
            "large_one_way_s": link_s,
            "bandwidth_bytes_per_s": link_bps,
        },
        "seconds": t,
        "gbps": gbps_,
        "ratio_to_pingpong": ratio,
        "ratio_per_round": per_round,
        "apply_big_s": med(apply_big),
        "notice_big_s": med(notice_big),
        "small_push": small,
        "small_push_bound_s": bound,
        "small_push_in_rtts": small["median_s"] / rtt,
        "fetch_retries": fetch_retries,
        "meets_bandwidth": ratio["fetch"] >= HOSTS_TARGET_BW and ratio["applied"] >= HOSTS_TARGET_BW,
        "meets_latency": small["median_s"] <= bound,
        "raw": [{k: v for k, v in row.items() if k not in ("small_start",)} for row in rows],
    }


def format_hosts(res: dict, rate: str) -> list[str]:
    p, t, r, s = res["pingpong"], res["seconds"], res["ratio_to_pingpong"], res["small_push"]
    link = p["bandwidth_bytes_per_s"]
    return [
        f"| {rate} | {link / 1e9:.3f} GB/s, RTT {p['rtt_s'] * 1e6:.0f} us "
        f"| {t['fetch'] * 1e3:.0f} ms, **{r['fetch']:.2f}x** "
        f"| {t['push'] * 1e3:.0f} ms, {r['push']:.2f}x "
        f"| {t['applied'] * 1e3:.0f} ms, **{r['applied']:.2f}x** (apply {res['apply_big_s'] * 1e3:.0f} ms) "
        f"| {s['median_s'] * 1e6:.0f} us (p90 {s['p90_s'] * 1e6:.0f}) = {res['small_push_in_rtts']:.1f} RTT "
        f"| {res['small_push_bound_s'] * 1e6:.0f} us (apply {s['apply_s'] * 1e6:.0f} us) "
        f"| {'met' if res['meets_bandwidth'] else 'MISSED'} / {'met' if res['meets_latency'] else 'MISSED'} |"
    ]


def hosts_driver(args) -> int:
    import mpi4py

    mpi4py.rc.initialize = False
    from machine import write_results

    from distbelief_mpi.emulation import EmulatedHosts, mpiexec_argv, unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"emulated hosts unavailable: {reason}", file=sys.stderr)
        return 2
    params = args.params or (QUICK_PARAMS if args.quick else SPEECH_PARAMS)
    repeats = args.repeats or (2 if args.quick else 5)
    small_pushes = 10 if args.quick else 30
    rates = args.rates or (["none"] if args.quick else ["none", "1gbit"])
    worker_args = [
        "--hosts-worker", "--params", str(params), "--repeats", str(repeats), "--rule", args.rule,
        "--small-pushes", str(small_pushes),
        "--round-trips", "20", "--large-round-trips", "2" if args.quick else "3",
    ]  # fmt: skip
    command = " ".join(["python bench/ps_bandwidth.py"] + sys.argv[1:])
    lines = header_lines(command)
    print("\n".join(lines), flush=True)
    results = {}
    segs = args.ucx_seg or [UCX_SEG]
    for rate, seg in [(rate, seg) for rate in rates for seg in segs]:
        shaped = None if rate == "none" else rate
        label = (rate if shaped else "unshaped") + ("" if len(segs) == 1 else f", UCX segments {seg}")
        seg_env = {} if seg == "default" else {"UCX_TCP_TX_SEG_SIZE": seg, "UCX_TCP_RX_SEG_SIZE": seg}
        with EmulatedHosts(2, rate=shaped, name=args.name, subnet=args.subnet) as hosts:
            launch = mpiexec_argv(hosts, [1, 1], mpiexec_path())
            if args.nice:
                launch = ["nice", "-n", str(args.nice), *launch]
            argv = ["timeout", "-k", "10", str(args.timeout), *launch, sys.executable, os.path.abspath(__file__)]
            env = {**os.environ, "PYTHONPATH": os.path.abspath(REPO), **seg_env}
            started = time.perf_counter()
            done = subprocess.run(argv + worker_args, capture_output=True, text=True, cwd=REPO, env=env)
        found = [line for line in done.stdout.splitlines() if line.startswith(HOSTS_PREFIX)]
        if done.returncode != 0 or not found:
            print(f"FAILED at {label} (exit {done.returncode})\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
            return 1
        res = json.loads(found[-1][len(HOSTS_PREFIX) :])
        res["wall_seconds"], res["rate"], res["ucx_seg"] = time.perf_counter() - started, label, seg
        results[label] = res
        print(f"{label}: " + json.dumps({k: res[k] for k in ("pingpong", "seconds", "ratio_to_pingpong")}))
        print(f"  small push {res['small_push']}, bound {res['small_push_bound_s'] * 1e6:.0f} us", flush=True)
    mb = 4 * params / 1e6
    text = [
        "## Parameter-server bandwidth and latency between hosts",
        "",
        f"{cpu_model()}, {usable_cores()} usable cores, {datetime.date.today()}, {mpi_library_line()}, "
        f"UCX over TCP between 2 emulated hosts (network namespaces behind a bridge; `--rates` shapes "
        f"both directions with tbf). Command: `{command}`"
        + (f" (ranks under `nice -n {args.nice}`)" if args.nice else "")
        + ".",
        "",
        f"Shard (rank 0) on h1, replica (rank 1) on h2. Medians of {repeats} rounds (+1 warm-up); each round "
        f"runs an MPI ping-pong between the two ranks ({PINGPONG_LARGE >> 20} MiB messages: the link rate; "
        f"{PINGPONG_SMALL}-byte ones: the round trip, RTT), then a fetch and a push of {params:,} float32 "
        f"({mb:.1f} MB), then {small_pushes} pushes of {SMALL_PUSH} float32 to a shard of their own, each "
        f"timed until the shard has applied it (the replica sees its slot released). Targets: push (until "
        f"applied) and fetch >= {HOSTS_TARGET_BW}x the ping-pong's rate; small push <= {HOSTS_TARGET_LAT:g} x "
        f"RTT + the shard's apply time (timed on the shard: rule, seqlock publish, release). UCX: "
        f"`UCX_TLS=tcp,self`, TCP segments {' / '.join(segs)} (`UCX_TCP_TX_SEG_SIZE`, `UCX_TCP_RX_SEG_SIZE`; "
        f"default = UCX's 8 KiB).",
        "",
        "| link | ping-pong | fetch | push, transfer | push until applied | small push until applied "
        "| 3 RTT + apply | targets (bw / latency) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, res in results.items():
        text += format_hosts(res, label)
    text.append("")
    text.append(
        "Push, transfer: until the push is posted (claim, Put, header, post); push until applied adds the "
        "shard's server rule on the whole slice, which the replica waits out."
    )
    print("\n".join(text))
    if args.out_dir:
        write_results(args.out_dir, "ps_bandwidth_hosts", "\n".join(text), {"header": lines, "results": results})
    return 0 if all(r["meets_bandwidth"] and r["meets_latency"] for r in results.values()) or args.quick else 1


# ---------------------------------------------------------------- the shard's kernels alone (--kernels)
def kernel_variants(n: int):
    """{label: (call, arrays moved)}: the shard's update as before this change (check, then the
    rule with its accumulator in place), fused with plain stores, fused with streaming stores
    (what the shard runs), for Adagrad and SGD; all over n float32 on 64-byte lines."""
    from distbelief_mpi.kernels import server_rules as sr

    def array(k: int, value: float) -> np.ndarray:
        # on 64-byte lines, k lines past a page: arrays at one offset within their pages would
        # make loads and stores of one iteration alias (4K aliasing), as the shard's do not
        return sr.aligned_full(n + 16 * k, value)[16 * k :]

    rng = np.random.default_rng(0)
    p_in, p_out, grad, acc, acc_out = array(0, 0.0), array(3, 0.0), array(6, 0.0), array(9, 0.1), array(12, 0.1)
    p_in[:] = rng.standard_normal(n)
    grad[:] = rng.standard_normal(n) * 1e-3
    rate, eps = 1e-9, 1e-8  # tiny steps: repeats do not drift
    return {
        "adagrad: all_finite + adagrad_apply_ (before)": (
            lambda: (sr.all_finite(grad), sr.adagrad_apply_(p_out, p_in, grad, acc, rate, eps)),
            5,
        ),
        "adagrad: fused, plain stores": (lambda: sr._adagrad_serial(p_out, p_in, grad, acc_out, acc, rate, eps), 5),
        "adagrad: adagrad_step (fused, streaming)": (
            lambda: sr.adagrad_step(p_out, p_in, grad, acc_out, acc, rate, eps),
            5,
        ),
        "sgd: all_finite + sgd_apply_ (before)": (
            lambda: (sr.all_finite(grad), sr.sgd_apply_(p_out, p_in, grad, rate)),
            3,
        ),
        "sgd: fused, plain stores": (lambda: sr._sgd_serial(p_out, p_in, grad, rate), 3),
        "sgd: sgd_step (fused, streaming)": (lambda: sr.sgd_step(p_out, p_in, grad, rate), 3),
    }


def kernels_main(args) -> int:
    """The update kernels in this process, interleaved with a memory copy, `--threads` threads."""
    from distbelief_mpi.kernels import server_rules as sr
    from distbelief_mpi.kernels.thread_pool import set_compute_threads

    n, repeats = args.params or SPEECH_PARAMS, args.repeats or 11
    set_compute_threads(args.threads)
    sr.warm_up()
    src, dst = np.random.default_rng(1).standard_normal(n).astype(np.float32), np.zeros(n, np.float32)
    variants = {"memcpy (np.copyto)": (lambda: np.copyto(dst, src), 2), **kernel_variants(n)}
    times: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(repeats + 1):  # the first round untimed: page faults
        for label, (call, _) in variants.items():
            t0 = time.perf_counter()
            call()
            times[label].append(time.perf_counter() - t0)
    print("\n".join(header_lines(" ".join(["python bench/ps_bandwidth.py"] + sys.argv[1:]))))
    memcpy = statistics.median(times["memcpy (np.copyto)"][1:])
    print(f"{n:,} float32, {args.threads} thread(s), median of {repeats}; bound = arrays / 2 x the memcpy's time")
    for label, (_, arrays) in variants.items():
        t = statistics.median(times[label][1:])
        bound = arrays / 2 * memcpy
        print(
            f"  {label:<46}{t * 1e3:8.2f} ms  {t / memcpy:5.2f}x memcpy  {t / bound:5.2f}x its bound ({arrays} arrays)"
        )
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, help="worker mode (under mpiexec -n SHARDS+1)")
    ap.add_argument("--all", action="store_true", help="driver: launch mpiexec for 1, 2 and 4 shards")
    ap.add_argument("--quick", action="store_true", help=f"driver: {QUICK_PARAMS:,} params, 3 repeats (smoke run)")
    ap.add_argument("--params", type=int, default=None, help=f"float32 parameters (default {SPEECH_PARAMS:,})")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; --quick 3)")
    ap.add_argument("--rule", choices=("adagrad", "sgd"), default="adagrad", help="the shards' server rule")
    ap.add_argument("--threads", type=int, default=1, help="compute threads per shard (threads_per_rank)")
    ap.add_argument(
        "--chunk", type=int, help="elements per chunk of a push (0: whole; default: replica_endpoint.PUSH_CHUNK)"
    )
    ap.add_argument("--timeout", type=int, default=150, help="driver: seconds per mpiexec run")
    ap.add_argument("--out", help="also write the results as JSON to this file")
    ap.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--hosts", action="store_true", help="driver: shard and replica on 2 emulated hosts")
    ap.add_argument("--kernels", action="store_true", help="the shard's update kernels alone, in this process")
    ap.add_argument("--rates", nargs="+", help="--hosts: links, tc rates or none (default: none 1gbit)")
    ap.add_argument("--name", default="bw", help="--hosts: emulated hosts' name")
    ap.add_argument("--subnet", default="10.236.0", help="--hosts: their /24")
    ap.add_argument("--nice", type=int, default=0, help="--hosts: run the ranks under nice -n NICE")
    ap.add_argument(
        "--ucx-seg", nargs="+", help=f"--hosts: UCX TCP segment sizes to run, or default (default: {UCX_SEG})"
    )
    ap.add_argument("--out-dir", help="--hosts: write ps_bandwidth_hosts.{md,json} here")
    ap.add_argument("--hosts-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--small-pushes", type=int, default=30, help=argparse.SUPPRESS)
    ap.add_argument("--round-trips", type=int, default=20, help=argparse.SUPPRESS)
    ap.add_argument("--large-round-trips", type=int, default=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.hosts:
        args.timeout = max(args.timeout, 300)
        return hosts_driver(args)
    if args.kernels:
        return kernels_main(args)
    if args.hosts_worker:
        return hosts_worker(args)
    if args.all:
        return driver(args)
    if args.shards is None or args.shards < 1:
        ap.error("give --shards S >= 1 (under mpiexec -n S+1) or --all")
    args.params = args.params or SPEECH_PARAMS
    args.repeats = args.repeats or 5
    return worker(args)


if __name__ == "__main__":
    sys.exit(main())
