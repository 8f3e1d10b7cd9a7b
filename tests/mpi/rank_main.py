"""Run on every rank by tests/mpi/runner.py: run one target, write RESULT_DIR/rank-R.json.

Targets: `distbelief ARGS...` (the CLI, in-process) or `program NAME ARGS...` (the function
`main(world_comm, args) -> dict` of tests/mpi/programs/NAME.py; an exception there is a failure).
"""

import importlib
import json
import os
import socket
import sys
import traceback
from pathlib import Path


def run_target(target: list[str]) -> tuple[int, dict]:
    if target[0] == "distbelief":
        from distbelief_mpi.cli import main

        try:
            return main(target[1:]), {}
        except SystemExit as exc:  # argparse exits
            return int(exc.code or 0), {}
    program = importlib.import_module(f"tests.mpi.programs.{target[1]}")
    from distbelief_mpi.comm.world import init_world

    world_comm, _, _ = init_world()
    return 0, program.main(world_comm, target[2:])


def main() -> None:
    from mpi4py import MPI

    result_dir, target = Path(sys.argv[1]), sys.argv[2:]
    rank = MPI.COMM_WORLD.Get_rank()
    (result_dir / f"rank-{rank}.pid").write_text(str(os.getpid()))  # lets a test signal one rank
    try:
        code, data = run_target(target)
    except Exception:  # noqa: BLE001 - recorded as this rank's failure
        code, data = 1, {"traceback": traceback.format_exc()}
        print(data["traceback"], file=sys.stderr)
    (result_dir / f"rank-{rank}.json").write_text(
        json.dumps({"rank": rank, "exit_code": code, "data": data, "hostname": socket.gethostname()})
    )
    sys.stdout.flush()
    sys.exit(code)  # so mpiexec's own exit status reflects the ranks', as it would without this wrapper


if __name__ == "__main__":
    main()
