"""Liveness across hosts without MPI: a process's liveness port (runtime/liveness_port.py), probed
over loopback as if from another host, and Peers choosing between the pid and the port."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from distbelief_mpi.roles.liveness import Peer, Peers
from distbelief_mpi.runtime import liveness_port
from distbelief_mpi.runtime.liveness_port import (
    ALIVE,
    CLOSED,
    PROBE_TIMEOUT_S,
    REFUSED,
    SILENT,
    STRANGER,
    UNREACHABLE,
    Contact,
    Prober,
    closest_first,
    host_addresses,
    knock,
)
from tests.mpi.runner import REPO

LISTENER = (
    "import sys\n"
    "from distbelief_mpi.runtime.liveness_port import own_contact\n"
    "contact = own_contact()\n"
    "print(contact.port, contact.token.hex(), flush=True)\n"
    "sys.stdin.read()\n"  # until the test closes our stdin: then exit
)


class Listener:
    """A child process with a liveness port; its Contact as seen from "another host" (loopback)."""

    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, "-c", LISTENER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        port, token = self.process.stdout.readline().split()
        self.contact = Contact(("127.0.0.1",), int(port), bytes.fromhex(token))

    def exit(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=20)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=20)


@pytest.fixture
def listener():
    started = Listener()
    yield started
    started.kill()


def _verdict(prober: Prober, rank: int, within: float = 5.0) -> bool | None:
    """verdict() until a probe made after this call has answered (verdict itself waits only briefly)."""
    asked = time.monotonic()
    deadline = asked + within
    while True:
        verdict = prober.verdict(rank)
        if prober.results.get(rank, (None, 0.0))[1] >= asked or time.monotonic() > deadline:
            return verdict
        time.sleep(0.05)


def _wait_for_state(pid: int, state: str) -> None:
    """Until /proc says the process is in `state` (T: stopped): a signal lands asynchronously."""
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != state:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _blackhole() -> tuple[socket.socket, socket.socket, int]:
    """A port whose SYNs are dropped, as to a host that is down: a listener that never accepts,
    its accept queue (backlog 0: one connection) already full."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    return server, socket.create_connection(("127.0.0.1", port)), port


def test_a_process_that_listens_then_exits_is_gone(listener):
    assert knock("127.0.0.1", listener.contact.port, listener.contact.token) == ALIVE
    prober = Prober({3: listener.contact})
    assert _verdict(prober, 3) is False
    assert prober.verified == {3: "127.0.0.1"}
    listener.exit()
    started = time.monotonic()
    assert _verdict(prober, 3) is True
    assert time.monotonic() - started < 1.0
    assert knock("127.0.0.1", listener.contact.port, listener.contact.token) == REFUSED


def test_a_stopped_process_is_alive(listener):
    prober = Prober({3: listener.contact})
    prober.watch([3])  # verified while it runs
    assert _verdict(prober, 3) is False
    os.kill(listener.process.pid, signal.SIGSTOP)
    _wait_for_state(listener.process.pid, "T")
    try:
        # the kernel still completes the handshake: accepted, but its token never comes
        assert knock("127.0.0.1", listener.contact.port, listener.contact.token, timeout=0.3) == SILENT
        time.sleep(liveness_port.FRESH_S)
        assert _verdict(prober, 3) is False
    finally:
        os.kill(listener.process.pid, signal.SIGCONT)
    assert _verdict(prober, 3) is False


def test_a_watched_rank_that_could_not_be_verified_at_first_is_tried_again(listener):
    os.kill(listener.process.pid, signal.SIGSTOP)
    _wait_for_state(listener.process.pid, "T")
    prober = Prober({3: listener.contact})
    prober.watch([3])
    time.sleep(PROBE_TIMEOUT_S + 0.2)
    assert prober.verified == {} and prober.results[3][0] is None  # accepted, no token: not verified
    os.kill(listener.process.pid, signal.SIGCONT)
    deadline = time.monotonic() + liveness_port.VERIFY_RETRY_S + 3
    while not prober.verified:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    listener.exit()
    assert _verdict(prober, 3) is True


def test_a_refusal_where_the_rank_was_never_verified_proves_nothing(listener):
    listener.exit()  # gone before anyone verified it: its address may not even be its host's
    prober = Prober({3: listener.contact})
    assert _verdict(prober, 3) is None
    assert prober.verified == {}


def test_an_address_nobody_answers_is_unknown_within_the_timeout():
    server, queued, port = _blackhole()
    with server, queued:
        prober = Prober({5: Contact(("127.0.0.1",), port, b"12345678")})
        started = time.monotonic()
        assert knock("127.0.0.1", port, b"12345678") == UNREACHABLE
        assert time.monotonic() - started < PROBE_TIMEOUT_S + 0.5
        started = time.monotonic()
        assert prober.verdict(5) is None  # never blocks the caller for the probe's timeout
        assert time.monotonic() - started < 0.2
        assert _verdict(prober, 5) is None
        assert time.monotonic() - started < PROBE_TIMEOUT_S + 1.0
        # the address is held: the next probes answer at once, without connecting
        assert "127.0.0.1" in prober.silent_until
        started = time.monotonic()
        time.sleep(liveness_port.FRESH_S)
        assert _verdict(prober, 5) is None
        assert time.monotonic() - started < liveness_port.FRESH_S + 0.3


def test_a_verified_rank_whose_host_stops_answering_is_unknown(listener, monkeypatch):
    prober = Prober({3: listener.contact})
    assert _verdict(prober, 3) is False
    monkeypatch.setattr(liveness_port, "knock", lambda *args, **kwargs: UNREACHABLE)
    time.sleep(liveness_port.FRESH_S)
    assert _verdict(prober, 3) is None


@pytest.mark.parametrize("answer,outcome", [(b"", CLOSED), (b"HTTP/1.0 400\r\n", STRANGER)])
def test_someone_else_on_the_port_is_not_the_rank(answer, outcome):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)

        def answer_once():
            conn, _ = server.accept()
            conn.sendall(answer)
            conn.close()

        thread = threading.Thread(target=answer_once)
        thread.start()
        assert knock("127.0.0.1", server.getsockname()[1], b"12345678") == outcome
        thread.join()


def test_host_addresses_are_ipv4_and_never_loopback():
    addresses = host_addresses()
    for address in addresses:
        socket.inet_aton(address)
        assert not address.startswith(("127.", "169.254."))


def _peer(space: str, hostname: str, pid: int, contact: Contact | None = None) -> Peer:
    return Peer(space, hostname, pid, contact or Contact((), 0, b""))


def test_peers_check_this_host_by_pid_and_other_hosts_by_port(listener):
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    peers = Peers(
        [
            _peer("here", "h1", os.getpid()),
            _peer("here", "h1", done.pid),
            _peer("there", "h2", 1, listener.contact),
            _peer("there", "h2", 1),  # no liveness port: cannot tell
        ],
        here="here",
    )
    assert peers.gone(0) is False and peers.gone(1) is True
    peers.watch([0, 1, 2, 3])
    assert _verdict(peers.prober, 2) is False
    assert peers.gone(3) is None
    assert peers.name(2) == "rank 2 on h2"
    listener.exit()
    assert _verdict(peers.prober, 2) is True
    assert peers.gone(2) is True


def test_one_host_names_ranks_without_it():
    peers = Peers([_peer("here", "n1", os.getpid()), _peer("here", "n1", os.getpid())], here="here")
    assert peers.name(1) == "rank 1"
    assert peers.prober.contacts == {}


def test_a_peers_address_on_a_subnet_of_this_host_is_tried_first():
    theirs = ["172.17.0.1", "10.1.2.3", "192.168.5.7"]  # docker0 first, as a host may list it
    assert closest_first(theirs, ["10.1.9.9"]) == ["10.1.2.3", "172.17.0.1", "192.168.5.7"]
    assert closest_first(theirs, []) == theirs
