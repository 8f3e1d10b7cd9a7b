"""python -m distbelief_mpi.emulation: run an MPI program across emulated hosts (docs/multihost.md).

python -m distbelief_mpi.emulation run --ranks 2,3 [--rate 1gbit] -- distbelief train JOB
python -m distbelief_mpi.emulation down      # remove leftovers of a run that was killed
"""

import argparse
import os
import shutil
import subprocess
import sys

from .hosts import DEFAULT_NAME, DEFAULT_SUBNET, EmulatedHosts, unavailable_reason
from .launch import mpiexec_argv


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distbelief_mpi.emulation",
        description="Rehearse a multi-node MPI job on one Linux machine: each emulated host is a network "
        "namespace with its own hostname and address behind a bridge; MPI is launched through an ssh "
        "stand-in and kept on its network path between hosts. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="create the hosts, run mpiexec across them, remove them")
    run.add_argument("--ranks", required=True, help="ranks per host, comma separated: 2,3 = 2 on h1, 3 on h2")
    run.add_argument("--rate", help="shape every host's link to this rate, both ways (tc syntax: 1gbit, 100mbit)")
    run.add_argument("--name", default=DEFAULT_NAME, help="prefix of namespaces and interfaces (default dbm)")
    run.add_argument(
        "--subnet", default=DEFAULT_SUBNET, help=f"the hosts' /24, its first three octets (default {DEFAULT_SUBNET})"
    )
    run.add_argument("--mpiexec", default=None, help="the MPI launcher (default: the one beside this Python)")
    run.add_argument("program", nargs=argparse.REMAINDER, help="-- then the program and its arguments")
    down = sub.add_parser("down", help="remove the namespaces and bridge a killed run left behind")
    down.add_argument("--name", default=DEFAULT_NAME)
    down.add_argument("--hosts", type=int, default=16, help="how many hosts to look for (default 16)")
    return parser


def default_mpiexec() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.path.exists(beside) else (shutil.which("mpiexec") or "mpiexec")


def parse_ranks(text: str) -> list[int] | None:
    """Ranks per host from "2,3": [2, 3], each >= 1; None for anything else."""
    try:
        ranks = [int(n) for n in text.split(",")]
    except ValueError:
        return None
    return ranks if ranks and min(ranks) >= 1 else None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ranks, program = None, []
    if args.command == "run":  # a wrong command line is reported first, also where hosts cannot be made
        ranks = parse_ranks(args.ranks)
        program = args.program[1:] if args.program[:1] == ["--"] else args.program
        if not program or ranks is None:
            print("usage: run --ranks N1,N2,... -- PROGRAM ARGS (each host >= 1 rank)", file=sys.stderr)
            return 2
    reason = unavailable_reason()
    if reason:
        print(f"emulated hosts are not available here: {reason}", file=sys.stderr)
        return 2
    try:
        if args.command == "down":
            EmulatedHosts(args.hosts, name=args.name).down()
            return 0
        assert ranks is not None
        with EmulatedHosts(len(ranks), rate=args.rate, name=args.name, subnet=args.subnet) as hosts:
            command = [*mpiexec_argv(hosts, ranks, args.mpiexec or default_mpiexec()), *program]
            print("emulated hosts:", ", ".join(f"{h} {hosts.address(h)}" for h in hosts.names), file=sys.stderr)
            return subprocess.run(command).returncode
    except ValueError as error:  # a bad name or subnet
        print(f"emulated hosts: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # `ip` or `tc` failed (a bad rate, say); its message names the command
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
