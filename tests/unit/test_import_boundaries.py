"""Import boundaries (docs/architecture.md): the pure packages never load MPI, and only
`comm/` moves data over MPI (roles call comm/'s functions and typed messages).

Outside comm/ a communicator or window may be passed along but not used: the scan flags every
mpi4py import, and every MPI method called on a name that is a communicator or a window by
the project's naming rule (communicators end in `comm`, windows in `win`)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

from tests.mpi.runner import REPO

PACKAGE = REPO / "distbelief_mpi"
PURE = ["config", "layout", "errors", "model", "optim", "data", "checkpoint", "kernels"]

# Communicator and window methods that move bytes or synchronise ranks. Their lower-case
# pickle twins too. A role that needs one calls a function of comm/ instead.
MPI_DATA_CALLS = {
    *"send recv isend irecv ssend bsend sendrecv bcast gather allgather scatter alltoall reduce allreduce".split(),
    *"Send Recv Isend Irecv Ssend Sendrecv Bcast Gather Allgather Scatter Alltoall Reduce Allreduce".split(),
    *"Iallreduce Ibcast Ibarrier Barrier Probe Iprobe Mprobe Improbe Split Dup Create_group".split(),
    *"Put Get Accumulate Get_accumulate Fetch_and_op Compare_and_swap Rput Rget Raccumulate".split(),
    *"Lock Lock_all Unlock Unlock_all Flush Flush_all Sync Fence Allocate Create Abort".split(),
}


COMMUNICATOR_NAME = re.compile(r"(^|_)comm$|(^|_)win$|^world$|^MPI$")


def _receiver_name(node: ast.expr) -> str:
    """`world_comm` for world_comm.send, `comm` for self.comm.send, '' for f().send."""
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else ""


def _modules(package: Path) -> list[Path]:
    return sorted(package.rglob("*.py")) if package.is_dir() else [package.with_suffix(".py")]


def test_pure_packages_never_import_mpi():
    """Each pure package, imported in a fresh interpreter, leaves mpi4py unloaded."""
    names = []
    for pure in PURE:
        for path in _modules(PACKAGE / pure):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            names.append(module.removesuffix(".__init__"))
    program = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mpi4py'"
        " or m.startswith(('distbelief_mpi.comm', 'distbelief_mpi.roles'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"pure packages loaded: {done.stdout}"


def _mpi_uses(source: str, where: str) -> list[str]:
    """where:line of each mpi4py import and each call of an MPI data-movement method, in line order."""
    found = []
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if any(m.split(".")[0] == "mpi4py" for m in modules):
                found.append((node.lineno, "imports mpi4py"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in MPI_DATA_CALLS and COMMUNICATOR_NAME.search(_receiver_name(node.func.value)):
                found.append((node.lineno, f".{node.func.attr}(...)"))
    return [f"{where}:{line}: {what}" for line, what in sorted(found)]


def test_only_comm_moves_data_over_mpi():
    outside = [path for path in _modules(PACKAGE) if "comm" not in path.relative_to(PACKAGE).parts]
    uses = [use for path in outside for use in _mpi_uses(path.read_text(), str(path.relative_to(REPO)))]
    assert not uses, "MPI outside distbelief_mpi/comm/ (move it into comm/):\n" + "\n".join(uses)


def test_the_scan_finds_what_it_looks_for():
    """The check above can fail: it sees an import, a send and a Put in a role-like file."""
    source = (
        "from mpi4py import MPI\nself.comm.send(1, dest=0, tag=2)\nself.data_win.Put(buf, 1)\n"
        "messenger.send(DONE, ReplicaDone(0), 1)\nworld_comm.Iprobe(source=1)\n"
    )
    assert _mpi_uses(source, "roles/x.py") == [
        "roles/x.py:1: imports mpi4py",
        "roles/x.py:2: .send(...)",
        "roles/x.py:3: .Put(...)",
        "roles/x.py:5: .Iprobe(...)",
    ]
