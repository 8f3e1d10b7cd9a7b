"""The floor that MPI's one-sided operations set across hosts, with no project code in the way.

    python bench/rma_floor.py [--rates none 1gbit] [--ops 200] [--quick] [--out-dir bench/results]
    python bench/rma_floor.py --worker ...                      # internal, 2 ranks

Rank 0 (the target, on emulated host h1) owns an 8 KiB window and does nothing but drive MPI's
progress engine: MPI_Iprobe in a tight loop (the best case; a real shard cannot afford to spin
on an oversubscribed node), or, in a second run, MPI_Iprobe after each wait of up to 2 ms in
epoll on its sockets, as an idle shard waits (comm/network_wait.py). Rank 1 (the origin, on
h2) holds a passive-target `Lock_all` epoch, as comm/param_server.py does, and times, per
operation, the call plus `Win_flush` (when the data is in place at the target or back at the
origin), against an 8-byte Send/Recv round trip (RTT) with the spinning target:
  put, get, accumulate, fetch_and_op, compare_and_swap: 8 bytes each;
  push until applied: the least any one-sided push protocol can do; the origin Puts 256 bytes
  of data and a sequence word and flushes, the target sees the word in its own memory and
  answers by storing it in an "applied" word, which the origin polls with Get + flush;
  push notified: the same, but the target Puts its answer into the origin's window.
A parameter-server push through one-sided MPI costs at least the least of the two; issue 13
asked for <= 3 RTT + the shard's apply time (docs/multihost.md, "The floor that one-sided MPI
sets").
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import numpy as np
from machine import cpu_model, mpi_library_line, mpi_result, mpiexec_path, usable_cores, write_results

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)
RESULT_PREFIX = "RMA_FLOOR_JSON "
WORDS = 1024  # int64 words in the target's control window (8 KiB)
BULK = 16 << 20  # bytes: the bandwidth transfers (beyond the shaper's burst), a second window
DATA_WORDS = 32  # the push's data: 256 bytes at words [0, 32)
SEQ_WORD, APPLIED_WORD, STOP_TAG = 64, 65, 9
OPS = ("pingpong", "put", "get", "accumulate", "fetch_and_op", "compare_and_swap")
OPS += ("push_until_applied", "push_notified")
NOTIFY_WORD = 66  # push_notified: the target Puts its answer here, in the origin's window
BULK_OPS = ("pingpong_16MiB", "put_16MiB", "get_16MiB")
BULK_COUNT = 10  # timed bulk transfers of each kind


def serve(comm, win, memory, sleeps: bool) -> None:
    """Target: drive progress until the origin's stop message; answer pushes (seq -> applied).
    sleeps: between polls, wait in epoll on the process's sockets for up to 2 ms as an idle
    shard does (comm/network_wait.py) instead of spinning."""
    from mpi4py import MPI

    from distbelief_mpi.comm.network_wait import wait_for_network

    status = MPI.Status()
    while True:
        if sleeps:
            wait_for_network(2e-3)
        # twice: MPICH/UCX matches before it progresses, so the first call after a wake-up reads
        # the message off the socket and reports nothing (alone, a ping-pong took the 2 ms wait)
        if comm.Iprobe(source=1, tag=MPI.ANY_TAG, status=status) or comm.Iprobe(
            source=1, tag=MPI.ANY_TAG, status=status
        ):
            if status.Get_tag() == STOP_TAG:
                comm.recv(source=1, tag=STOP_TAG)
                return
            buf = np.zeros(status.Get_count(MPI.BYTE), np.uint8)  # a ping-pong's message
            comm.Recv(buf, source=1, tag=status.Get_tag())
            comm.Send(buf, dest=1, tag=status.Get_tag())
        win.Sync()  # the origin's Puts visible in our own loads (separate memory model)
        if memory[SEQ_WORD] != memory[APPLIED_WORD]:
            memory[APPLIED_WORD] = memory[SEQ_WORD]
            win.Sync()
            if memory[SEQ_WORD] < 0:  # push_notified (negative sequence): answer into the origin
                win.Put([memory[APPLIED_WORD : APPLIED_WORD + 1], MPI.INT64_T], 1, target=(NOTIFY_WORD, 1, MPI.INT64_T))
                win.Flush(1)


def timed(op, count: int) -> list[float]:
    """Seconds of each of `count` calls of op(i), after two untimed ones."""
    times = []
    for i in range(count + 2):
        tick = time.perf_counter()
        op(i)
        if i >= 2:
            times.append(time.perf_counter() - tick)
    return times


def bulk_ops(comm, bulk):
    """{name: op(i)} moving BULK bytes: a ping-pong (there and back) and a flushed Put and Get."""
    from mpi4py import MPI

    buf = np.zeros(BULK, np.uint8)

    def pingpong(i):
        comm.Send(buf, dest=0, tag=8)
        comm.Recv(buf, source=0, tag=8)

    def put(i):
        bulk.Put([buf, MPI.BYTE], 0)
        bulk.Flush(0)

    def get(i):
        bulk.Get([buf, MPI.BYTE], 0)
        bulk.Flush(0)

    return {"pingpong_16MiB": pingpong, "put_16MiB": put, "get_16MiB": get}


def origin_ops(comm, win, memory):
    """{name: op(i)} for the origin (rank 1), each one complete when it returns."""
    from mpi4py import MPI

    # [buffer, MPI.INT64_T]: origin and target types must match exactly for accumulates
    one, out, compare = ([np.ones(1, np.int64), MPI.INT64_T] for _ in range(3))
    out[0][0] = compare[0][0] = 0
    data, ping = [np.ones(DATA_WORDS, np.int64), MPI.INT64_T], np.zeros(1, np.uint8)

    def pingpong(i):
        comm.Send(ping, dest=0, tag=7)
        comm.Recv(ping, source=0, tag=7)

    def flushed(call):
        def op(i):
            call()
            win.Flush(0)

        return op

    def push_until_applied(i):
        seq = [np.array([i + 1], np.int64), MPI.INT64_T]
        win.Put(data, 0, target=(0, DATA_WORDS, MPI.INT64_T))
        win.Put(seq, 0, target=(SEQ_WORD, 1, MPI.INT64_T))
        win.Flush(0)
        while True:  # poll the target's answer, as a replica polls its slot
            win.Get(out, 0, target=(APPLIED_WORD, 1, MPI.INT64_T))
            win.Flush(0)
            if out[0][0] == seq[0][0]:
                return

    def push_notified(i):
        """As push_until_applied, but the target Puts its answer into our window: no polling Get."""
        seq = [np.array([-(i + 1)], np.int64), MPI.INT64_T]
        win.Put(data, 0, target=(0, DATA_WORDS, MPI.INT64_T))
        win.Put(seq, 0, target=(SEQ_WORD, 1, MPI.INT64_T))
        win.Flush(0)
        while True:
            comm.Iprobe(source=0, tag=99)  # drive progress so the target's Put lands
            win.Sync()
            if memory[NOTIFY_WORD] == seq[0][0]:
                return

    return {
        "push_notified": push_notified,
        "pingpong": pingpong,
        "put": flushed(lambda: win.Put(one, 0, target=(128, 1, MPI.INT64_T))),
        "get": flushed(lambda: win.Get(out, 0, target=(128, 1, MPI.INT64_T))),
        "accumulate": flushed(lambda: win.Accumulate(one, 0, target=(129, 1, MPI.INT64_T), op=MPI.SUM)),
        "fetch_and_op": flushed(lambda: win.Fetch_and_op(one, out, 0, 130, op=MPI.SUM)),
        "compare_and_swap": flushed(lambda: win.Compare_and_swap(one, compare, out, 0, 131)),
        "push_until_applied": push_until_applied,
    }


def worker(args) -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_size() != 2:
        raise SystemExit("--worker needs exactly 2 ranks (target, origin)")
    win = MPI.Win.Allocate(8 * WORDS, 8, comm=comm)
    bulk = MPI.Win.Allocate(BULK if comm.Get_rank() == 0 else 0, 1, comm=comm)
    memory = np.frombuffer(win.tomemory(), dtype=np.int64)
    memory[:] = 0
    comm.Barrier()
    if comm.Get_rank() == 0:
        win.Lock_all()
        serve(comm, win, memory, args.sleeping_target)
        win.Unlock_all()
    else:
        win.Lock_all()
        bulk.Lock_all()
        ops = origin_ops(comm, win, memory)
        times = {name: timed(ops[name], args.ops) for name in OPS}
        big = bulk_ops(comm, bulk)
        times.update({name: timed(big[name], BULK_COUNT) for name in BULK_OPS})
        bulk.Unlock_all()
        win.Unlock_all()
        comm.send(None, dest=0, tag=STOP_TAG)
        result = {
            "host": os.uname().nodename,
            "median_us": {k: 1e6 * statistics.median(v) for k, v in times.items()},
            "p90_us": {k: 1e6 * sorted(v)[int(0.9 * len(v))] for k, v in times.items()},
        }
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    comm.Barrier()
    bulk.Free()
    win.Free()
    return 0


def run_on_hosts(rate: str | None, sleeps: bool, args) -> dict:
    """One worker run with the target on h1 and the origin on h2: the origin's result."""
    from distbelief_mpi.emulation import EmulatedHosts, mpiexec_argv

    worker_args = ["--worker", "--ops", str(args.ops)] + (["--sleeping-target"] if sleeps else [])
    env = {**os.environ, "PYTHONPATH": os.path.abspath(REPO), **args.ucx_env}
    with EmulatedHosts(2, rate=rate, name=args.name, subnet=args.subnet) as hosts:
        launch = ["timeout", "-k", "10", "120", *mpiexec_argv(hosts, [1, 1], mpiexec_path())]
        return mpi_result(2, os.path.abspath(__file__), worker_args, RESULT_PREFIX, 150, env=env, launch=launch)


def table(results: dict[str, dict]) -> list[str]:
    """One row per run: each op's median in us and in RTTs of the link's network round trip: the
    ping-pong of the run whose target spins (against a sleeping target a ping-pong measures the
    target's wake-up too)."""
    rows = ["| link | " + " | ".join(OPS) + " |", "|---" * (len(OPS) + 1) + "|"]
    for label, res in results.items():
        link = label.split(",")[0]
        rtt = results.get(f"{link}, target spins", res)["median_us"]["pingpong"]
        cells = [f"{res['median_us'][op]:.0f} us ({res['median_us'][op] / rtt:.1f} RTT)" for op in OPS]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def bulk_table(results: dict[str, dict]) -> list[str]:
    """One row per link: GB/s of each bulk transfer and its ratio to the ping-pong's rate."""
    rows = ["| link | ping-pong | Put + flush | Get + flush |", "|---|---|---|---|"]
    for label, res in results.items():
        rate = {op: BULK / (res["median_us"][op] * 1e-6) / 1e9 for op in BULK_OPS}
        rate["pingpong_16MiB"] *= 2  # there and back
        ref = rate["pingpong_16MiB"]
        cells = [f"{rate[op]:.3f} GB/s ({rate[op] / ref:.2f}x)" for op in BULK_OPS]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def driver(args) -> int:
    import mpi4py

    mpi4py.rc.initialize = False
    from distbelief_mpi.emulation import unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"emulated hosts unavailable: {reason}", file=sys.stderr)
        return 2
    command = " ".join(["python bench/rma_floor.py"] + sys.argv[1:])
    results = {}
    for rate, sleeps in [(rate, sleeps) for rate in args.rates for sleeps in (False, True)]:
        label = ("unshaped" if rate == "none" else rate) + (", target sleeps" if sleeps else ", target spins")
        results[label] = run_on_hosts(None if rate == "none" else rate, sleeps, args)
        print(f"{label}: {json.dumps(results[label]['median_us'])}", flush=True)
    text = [
        "## One-sided MPI across hosts: the floor under any push protocol",
        "",
        f"{cpu_model()}, {usable_cores()} usable cores, {datetime.date.today()}, {mpi_library_line()}, "
        f"UCX over TCP (`UCX_TLS=tcp,self`, segments {args.ucx_seg or 'default'}) between 2 emulated hosts. "
        f"Command: `{command}`.",
        "",
        f"Target (rank 0, h1) spins in MPI_Iprobe, or sleeps: waits up to 2 ms in epoll on its sockets between "
        f"polls, as an idle shard does (comm/network_wait.py); origin (rank 1, h2) in a `Lock_all` epoch. Medians of "
        f"{args.ops} operations each, every one including `Win_flush`; RTT = 8-byte Send/Recv round trip.",
        "",
        *table(results),
        "",
        "push_until_applied: Put 256 B + Put seq + flush, then Get + flush until the target has answered. "
        "push_notified: the same Puts, then the target Puts its answer into the origin's window (and flushes); "
        "the origin polls its own memory.",
        "",
        f"Bandwidth, {BULK >> 20} MiB per transfer, medians of {BULK_COUNT}:",
        "",
        *bulk_table(results),
    ]
    print("\n".join(text))
    if args.out_dir:
        stem = "rma_floor" + (f"_seg{args.ucx_seg}" if args.ucx_seg else "")
        write_results(args.out_dir, stem, "\n".join(text), {"command": command, "results": results})
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", nargs="+", default=["none", "1gbit"], help="links: tc rates or none")
    ap.add_argument("--ops", type=int, default=200, help="timed operations of each kind (default 200)")
    ap.add_argument("--quick", action="store_true", help="40 operations, unshaped only")
    ap.add_argument("--name", default="rf", help="emulated hosts' name")
    ap.add_argument("--subnet", default="10.237.0", help="their /24")
    ap.add_argument("--out-dir", help="write rma_floor.{md,json} here")
    ap.add_argument("--ucx-seg", help="UCX TCP segment size, e.g. 256k (default: UCX's 8 KiB)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sleeping-target", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ops < 1:
        ap.error(f"--ops must be >= 1, got {args.ops}")  # exit 2
    if args.worker:
        return worker(args)
    args.ucx_env = {f"UCX_TCP_{way}_SEG_SIZE": args.ucx_seg for way in ("TX", "RX")} if args.ucx_seg else {}
    if args.quick:
        args.ops, args.rates = 40, ["none"]
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
