"""Parameter-server latency and idle cost: a small push until applied, a small fetch, and the CPU an
idle shard uses (the real Shard serve loop, comm/param_server.py windows).

    python bench/ps_latency.py [--pushes 300] [--quick] [--out-dir DIR]
    mpiexec -n 2 python bench/ps_latency.py --worker ...          # internal

Rank 0 is a shard of 64 float32 parameters (Adagrad); rank 1 a replica that, per repeat, posts a push
and polls until the shard has applied it (its landing slot released), then fetches the 64 parameters.
Medians and 90th percentiles over repeats. Then the replica sleeps 2 s while the shard waits with
nothing to do: the shard's CPU seconds over that wall time is the idle cost.
"""

import argparse
import datetime
import json
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULT_PREFIX = "PS_LATENCY_JSON "
IDLE_S = 2.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(pushes: int) -> None:
    import numpy as np
    from mpi4py import MPI

    from distbelief_mpi.comm.control import barrier_sleeping
    from distbelief_mpi.comm.messages import DONE, Messenger, ReplicaDone
    from distbelief_mpi.comm.param_server import ParamServerWindows
    from distbelief_mpi.comm.replica_endpoint import ReplicaEndpoint
    from distbelief_mpi.config import Optimizer
    from distbelief_mpi.roles.downpour.shard import Shard

    comm = MPI.COMM_WORLD.Dup()
    rank, n = comm.Get_rank(), 64
    messenger = Messenger(comm)
    windows = ParamServerWindows(comm, [0], [(0, n)], 1, 0 if rank == 0 else -1)
    if rank == 0:
        shard = Shard(windows, 0, Optimizer(), np.zeros(n, np.float32))
        shard.warm_up()
        barrier_sleeping(comm)
        shard.serve(messenger)  # until the replica's first "done"
    else:
        endpoint, grad = ReplicaEndpoint(windows, 0), np.ones(n, np.float32)
        barrier_sleeping(comm)
        push_s, fetch_s, params = [], [], np.empty(n, np.float32)
        for _ in range(pushes + 10):
            tick = time.perf_counter()
            endpoint.push(0, grad, 0, 1)
            while not endpoint.slot_free(0):  # applied (polled without sleeping: this measures latency)
                pass
            push_s.append(time.perf_counter() - tick)
            tick = time.perf_counter()
            endpoint.fetch(0, params)
            fetch_s.append(time.perf_counter() - tick)
        messenger.send(DONE, ReplicaDone(0), 0)
    barrier_sleeping(comm)
    # Idle cost: the shard serves again while the replica sleeps, then says done.
    if rank == 0:
        cpu, wall = cpu_seconds(), time.perf_counter()
        shard.serve(messenger)
        cpu_fraction = (cpu_seconds() - cpu) / (time.perf_counter() - wall)
        comm.send(cpu_fraction, dest=1)
    else:
        time.sleep(IDLE_S)
        messenger.send(DONE, ReplicaDone(0), 0)
        cpu_fraction = comm.recv(source=0)
        push_s, fetch_s = push_s[10:], fetch_s[10:]
        print(
            RESULT_PREFIX
            + json.dumps(
                {
                    "push_applied_us": [statistics.median(push_s) * 1e6, statistics.quantiles(push_s, n=10)[-1] * 1e6],
                    "fetch_us": [statistics.median(fetch_s) * 1e6, statistics.quantiles(fetch_s, n=10)[-1] * 1e6],
                    "idle_shard_cpu": cpu_fraction,
                    "pushes": pushes,
                }
            ),
            flush=True,
        )
    barrier_sleeping(comm)
    windows.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pushes", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="50 pushes")
    parser.add_argument("--out-dir", help="write ps_latency.md and ps_latency.json here")
    args = parser.parse_args()
    pushes = 50 if args.quick else args.pushes
    if args.worker:
        worker(pushes)
        return
    from machine import cpu_model, mpi_result, usable_cores, write_results  # bench/machine.py

    r = mpi_result(2, __file__, ["--worker", "--pushes", str(pushes)], RESULT_PREFIX, timeout=300)
    text = "\n".join(
        [
            "## Parameter server: small-push latency and idle cost",
            "",
            f"{cpu_model()}, {usable_cores()} cores, {datetime.date.today()}. Command: "
            f"`python bench/ps_latency.py --pushes {pushes}` (1 shard of 64 parameters, Adagrad, 1 replica).",
            "",
            "| figure | median | 90th percentile |",
            "|---|---|---|",
            f"| push of 64 floats until the shard has applied it | {r['push_applied_us'][0]:.0f} us "
            f"| {r['push_applied_us'][1]:.0f} us |",
            f"| fetch of 64 floats | {r['fetch_us'][0]:.0f} us | {r['fetch_us'][1]:.0f} us |",
            f"| CPU of an idle shard over {IDLE_S:g} s | {r['idle_shard_cpu']:.1%} of one core | |",
        ]
    )
    print(text)
    if args.out_dir:
        write_results(args.out_dir, "ps_latency", text, r)


if __name__ == "__main__":
    main()
