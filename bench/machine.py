"""What every benchmark prints about the machine it ran on, where it writes its results, how
it launches MPI runs (a `distbelief train` job, or a script's own worker mode), and the MPI
link between two ranks of a running job (`pingpong`: the cost model's latency and bandwidth)."""

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_results(out_dir: str, stem: str, text: str, data) -> Path:
    """OUT_DIR/STEM.md (the markdown section) and OUT_DIR/STEM.json (the raw figures); returns
    the folder, for plots. python -m bench reads the .md back into BENCHMARKS.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(text + "\n")
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    return out


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def mpi_library_line() -> str:
    """Callable before MPI_Init (a driver that only launches mpiexec never initializes MPI)."""
    from mpi4py import MPI

    return MPI.Get_library_version().strip().splitlines()[0].strip()


def mpiexec_path() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.path.exists(beside) else shutil.which("mpiexec")
    if not found:
        raise SystemExit("mpiexec not found (install the project: pip install -e .)")
    return found


def launcher_flags(mpiexec: str) -> list[str]:
    """Open MPI refuses more ranks than cores (and root) unless told, and binds each rank to one
    core, so a rank's compute threads (threads_per_rank > 1) would share it; MPICH does neither."""
    version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" not in version and "OpenRTE" not in version:
        return []
    return ["--oversubscribe", "--bind-to", "none"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])


def mpiexec_command(ranks: int) -> list[str]:
    mpiexec = mpiexec_path()
    return [mpiexec, *launcher_flags(mpiexec), "-n", str(ranks)]


def train_job(job: str, ranks: int, sets: list[str], run_dir: Path, timeout: float, args: tuple = ()) -> dict:
    """`mpiexec -n RANKS distbelief train jobs/JOB --run-dir RUN_DIR --set ... ARGS`; its summary.json."""
    command = [
        *mpiexec_command(ranks),
        sys.executable,
        "-m",
        "distbelief_mpi",
        "train",
        str(REPO / "jobs" / job),
        "--run-dir",
        str(run_dir),
        "--no-progress",
        *[item for kv in sets for item in ("--set", kv)],
        *args,
    ]
    subprocess.run(command, check=True, cwd=REPO, capture_output=True, timeout=timeout)
    return json.loads((Path(run_dir) / "summary.json").read_text())


def mpi_result(
    ranks: int,
    script: str,
    args: list[str],
    prefix: str,
    timeout: float,
    env: dict | None = None,
    launch: list[str] | None = None,
) -> dict:
    """Run `script args` on RANKS ranks; the JSON its rank 0 printed after `prefix`. launch: the
    launcher's argv up to the program (default `mpiexec -n RANKS`; emulated hosts give theirs)."""
    done = subprocess.run(
        [*(launch or mpiexec_command(ranks)), sys.executable, script, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=timeout,
    )
    for line in done.stdout.splitlines():
        if prefix in line:  # not always at the start: Open MPI may prefix terminal escapes (ESC[0m)
            return json.loads(line[line.index(prefix) + len(prefix) :])
    raise RuntimeError(
        f"no result from {Path(script).name} {' '.join(args)} on {ranks} ranks (exit "
        f"{done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )


PINGPONG_SMALL = 1024  # bytes: the latency message
PINGPONG_LARGE = 4 << 20  # bytes: the bandwidth message (several TCP windows; beyond a shaper's burst)
PINGPONG_CURVE = (PINGPONG_SMALL, 16 << 10, 64 << 10, 256 << 10, 1 << 20, PINGPONG_LARGE)  # powers of 4


def pingpong(
    comm, a: int, b: int, repeats: int = 10, sizes: tuple[int, ...] = (PINGPONG_SMALL, PINGPONG_LARGE)
) -> dict:
    """The link between ranks a and b of `comm`, measured inside a running job with blocking
    Send / Recv: the median one-way time (half a round trip, after 2 warm-up round trips) of
    every message size in `sizes`; latency = the smallest's time, bandwidth = the largest
    over its time minus the latency. Collective over `comm` (the other ranks wait in
    barriers); every rank returns {latency_s, bandwidth_bytes_per_s, curve [[bytes, s], ...],
    repeats}."""
    import numpy as np

    rank, curve = comm.Get_rank(), []
    for n in sorted(sizes):
        buf, times = np.zeros(n, np.uint8), []
        for _ in range(repeats + 2):
            comm.Barrier()
            tick = time.perf_counter()
            if rank in (a, b):
                other = b if rank == a else a
                for sender in (a, b):  # a -> b, then back
                    if rank == sender:
                        comm.Send(buf, other)
                    else:
                        comm.Recv(buf, other)
            times.append((time.perf_counter() - tick) / 2)
        curve.append([n, statistics.median(times[2:])])
    latency, (large, t_large) = curve[0][1], curve[-1]
    link = {
        "latency_s": latency,
        "bandwidth_bytes_per_s": large / max(t_large - latency, 1e-9),
        "curve": curve,
        "repeats": repeats,
    }
    return comm.bcast(link, root=a)


def others_runnable(seconds: float = 1.0) -> float:
    """Mean number of runnable tasks besides the caller over `seconds` (/proc/loadavg's running
    count, sampled every 50 ms): what a benchmark started now would share the cores with."""
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with open("/proc/loadavg") as f:
                samples.append(int(f.read().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return 0.0
        time.sleep(0.05)
    return sum(samples) / len(samples)


def wait_for_calm(limit_s: float, threshold: float = 0.5) -> float:
    """Wait (sampling each second, at most limit_s) until at most `threshold` other tasks are
    runnable on average; returns the last sample (a shared machine: it may never get calm)."""
    deadline, busy = time.monotonic() + limit_s, others_runnable()
    while busy > threshold and time.monotonic() < deadline:
        busy = others_runnable()
    return busy


class OthersMonitor:
    """`with OthersMonitor() as m: run()`; m.mean: the mean number of runnable tasks during the
    block that are neither this process nor its descendants (the MPI ranks it launched), sampled
    every `interval` s: /proc/loadavg's running count minus the descendants found running (the
    process tree is listed again every `rescan` s; a sample reads only its members' states)."""

    def __init__(self, interval: float = 0.25, rescan: float = 2.0):
        import threading

        self.interval, self.rescan, self.samples = interval, rescan, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "OthersMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else 0.0

    def _run(self) -> None:
        mine: set[int] = set()
        listed = 0.0
        while not self._stop.wait(self.interval):
            try:
                if time.monotonic() - listed > self.rescan:
                    mine, listed = self._descendants(), time.monotonic()
                with open("/proc/loadavg") as f:
                    running = int(f.read().split()[3].split("/")[0])
                self.samples.append(max(0, running - 1 - sum(self._state(pid) == "R" for pid in mine)))
            except (OSError, ValueError, IndexError):
                return

    @staticmethod
    def _state(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return ""

    @staticmethod
    def _descendants() -> set[int]:
        parent = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/stat") as f:
                        parent[int(entry.name)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        mine, frontier = set(), [os.getpid()]
        while frontier:
            children = [c for c, p in parent.items() if p == frontier[-1]]
            frontier.pop()
            mine.update(children)
            frontier += children
        return mine
