"""spawn.py with the leaver on another emulated host (docs/multihost.md): shard and lead on h1,
the bystander and the leaver on h2. Needs root (network namespaces).

usage: spawn_hosts.py TAG PYTHON MPIEXEC 'EXTRA FLAGS' [--modes 1,5]
  e.g. spawn_hosts.py hosts_mpich .venv/bin/python .venv/bin/mpiexec '-disable-auto-cleanup'
Appends to results_TAG.jsonl and logs/TAG/ as runner.py --probe spawn does (spawn from the
survivors' group, both ends)."""

import itertools
import os
import shlex
import sys

from spawn_matrix import leftovers_of, record, run_one

from distbelief_mpi.emulation import EmulatedHosts, mpiexec_argv

HERE = os.path.dirname(os.path.abspath(__file__))


def launch_string(hosts: EmulatedHosts, mpiexec: str, extra: str) -> str:
    """The launcher across h1:2,h2:2 with `extra`, without its -n (run_one adds it)."""
    argv = mpiexec_argv(hosts, [2, 2], mpiexec)
    at = argv.index("-n")
    return shlex.join(argv[:at] + argv[at + 2 :] + shlex.split(extra))


def main() -> None:
    args = sys.argv[1:]
    modes = [1, 5]
    if "--modes" in args:
        at = args.index("--modes")
        modes = [int(m) for m in args[at + 1].split(",")]
        del args[at : at + 2]
    tag, py, mpiexec, extra = args
    os.makedirs(f"{HERE}/logs/{tag}", exist_ok=True)
    with EmulatedHosts(2, name="spw", subnet="10.237.0") as hosts:
        launch = launch_string(hosts, mpiexec, extra)
        for mode, end in itertools.product(modes, ("exit", "finalize")):
            rec = run_one(HERE, tag, py, launch, [str(mode), "group", end], leftovers_of(tag))
            rec.update(where="h2", launch=launch, mode=mode, source="group", end=end)
            record(HERE, tag, f"hosts_m{mode}_group_{end}", rec)


if __name__ == "__main__":
    main()
