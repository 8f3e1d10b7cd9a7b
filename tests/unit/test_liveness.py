"""Pure parts of hang and loss detection: the watchdog thread, process checks, a shard's verdicts."""

import subprocess
import sys
import threading
import time

from distbelief_mpi.config import Faults
from distbelief_mpi.roles import liveness
from distbelief_mpi.roles.liveness import ReplicaWatch
from distbelief_mpi.runtime import watchdog
from distbelief_mpi.runtime.fault_injection import FaultInjector
from distbelief_mpi.runtime.processes import process_alive


def test_the_watchdog_fires_after_the_timeout_without_beats(capfd):
    fired = threading.Event()
    codes = []
    with watchdog.Watchdog(0.3, "rank 7 (replica 2/partition 0)", lambda code: (codes.append(code), fired.set())):
        assert fired.wait(5)
    assert codes == [watchdog.EXIT_HUNG]
    assert "rank 7 (replica 2/partition 0): watchdog: no progress" in capfd.readouterr().err


def test_beats_from_the_main_thread_keep_the_watchdog_quiet():
    codes = []
    with watchdog.Watchdog(0.4, "rank 0", codes.append):
        for _ in range(20):
            watchdog.beat()
            time.sleep(0.05)
    assert codes == []


def test_beats_from_another_thread_do_not_count():
    codes = []
    with watchdog.Watchdog(0.3, "rank 0", codes.append):
        other = threading.Thread(target=lambda: [watchdog.beat() or time.sleep(0.02) for _ in range(50)])
        other.start()
        other.join()
    assert codes == [watchdog.EXIT_HUNG]


def test_a_zero_timeout_is_off_and_beats_are_harmless():
    with watchdog.Watchdog(0, "rank 0", lambda code: (_ for _ in ()).throw(AssertionError)):
        watchdog.beat()
    watchdog.beat()


def test_process_alive_tells_running_from_exited_and_zombie():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while process_alive(child.pid):  # a zombie until reaped: counts as exited
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.wait()
    assert not process_alive(child.pid)
    assert process_alive(subprocess.os.getpid())


class FakePeers:
    def __init__(self, gone: dict[int, bool | None]):
        self.gone = gone.get  # world rank -> exited (True), running (False), unknowable (None)
        self.watched: list[int] = []

    def watch(self, ranks) -> None:
        self.watched += ranks

    def name(self, rank: int) -> str:
        return f"rank {rank} on h2"


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watch(gone: dict[int, bool | None], timeout: float, monkeypatch) -> tuple[ReplicaWatch, FakeClock]:
    clock = FakeClock()
    monkeypatch.setattr(liveness.time, "monotonic", clock)
    return ReplicaWatch(FakePeers(gone), [0, 1, 2], timeout), clock


def test_a_silent_replica_whose_process_exited_has_left(monkeypatch):
    watch, clock = _watch({0: False, 1: True, 2: False}, 100, monkeypatch)
    clock.now += 2.0
    assert watch.verdicts(finished=set()) == ([1], [])
    clock.now += 2.0
    assert watch.verdicts(finished={1}) == ([], [])


def test_a_silent_live_replica_is_hung_only_after_the_timeout_and_its_first_push(monkeypatch):
    watch, clock = _watch({0: False, 1: False, 2: None}, 5, monkeypatch)
    watch.saw(1)
    watch.saw(2)
    clock.now += 3.0
    assert watch.verdicts(set()) == ([], [])
    clock.now += 3.0
    left, hung = watch.verdicts(set())
    assert left == [] and [replica for replica, _ in hung] == [1, 2]  # replica 0 never pushed: may be warming up
    assert watch.who(1) == "replica 1 (rank 1 on h2)"
    assert watch.state(1) == "its process has not exited"
    assert watch.state(2) == "its process cannot be checked from here"  # another host that does not answer


def test_a_replica_watch_verifies_the_replicas_at_once(monkeypatch):
    watch, _ = _watch({0: False, 1: False, 2: False}, 5, monkeypatch)
    assert watch.peers.watched == [0, 1, 2]


def test_slow_injection_stretches_only_the_chosen_replica(monkeypatch):
    slept = []
    monkeypatch.setattr("distbelief_mpi.runtime.fault_injection.time.sleep", slept.append)
    faults = Faults(inject="slow", inject_replica=1, slow_factor=5.0)
    FaultInjector(faults, 0).after_step(1, 0.01)
    FaultInjector(faults, 1).after_step(1, 0.01)
    assert slept == [0.04]
