"""Is a process on another host still there? Its liveness port says.

kill(pid, 0) only answers for processes of this host. So every rank opens, at start-up, a
listening TCP socket on all IPv4 addresses (an ephemeral port) and keeps it for its whole life;
a daemon thread accepts each connection, writes the rank's token (8 random bytes, gathered with
the port) and closes it. The kernel holds the socket for the process: when the process exits, by
any means, the socket goes with it and a connection to it is refused; a process that is stopped
(SIGSTOP) or hung still has its socket, and the kernel still completes the handshake.

A probe of a rank on another host (`Prober`) connects to its port:

    outcome (knock)                          at a verified address     elsewhere
    ALIVE: its token comes back              alive                     alive; now verified
    SILENT: accepted, no token in time       alive (stopped, or hung   unknown
                                             holding the GIL)
    REFUSED: refused, or reset while queued  gone: it has exited       unknown
    STRANGER: other bytes than its token     gone: another process     unknown
                                             has its port
    CLOSED: accepted, closed without a word  unknown                   unknown
    UNREACHABLE: timeout, no route           unknown (host down?); the address is not tried
                                             again for UNKNOWN_HOLD_S

An address is *verified* for a rank once that rank's own token came back from it. Only there
can a refusal prove the rank gone, and only there does an accepted connection without the token
mean it is alive: an address that also exists elsewhere (docker0's 172.17.0.1 on every node),
a firewall that rejects with a reset or ICMP port-unreachable, or a transparent proxy that
accepts every connection (the machine this was written on has one for addresses beyond its own
subnets) must never make a live rank gone, nor a gone one alive. So `watch()` probes the ranks a caller will ask
about while they are all alive (at start-up), in the background, which verifies them.

Probes block (a connect times out after PROBE_TIMEOUT_S), so they run on one daemon thread;
`verdict()` waits at most VERDICT_WAIT_S for a fresh answer and otherwise returns the previous
one: a shard serving pushes is never stalled by a host that does not answer.
"""

import fcntl
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, replace

log = logging.getLogger(__name__)

TOKEN_BYTES = 8
PROBE_TIMEOUT_S = 0.5  # connect, then read the token: a LAN answers in well under a millisecond
UNKNOWN_HOLD_S = 5.0  # an address that did not answer is not tried again before this
FRESH_S = 0.25  # a verdict younger than this is reused, not probed again
VERDICT_WAIT_S = 0.02  # how long verdict() waits for a probe it started
VERIFY_RETRY_S = 2.0  # a watched rank not verified yet is probed again this often

# Linux ioctls (linux/sockios.h, linux/if.h): an interface's flags and its IPv4 address.
_SIOCGIFFLAGS, _SIOCGIFADDR, _IFF_UP = 0x8913, 0x8915, 0x1


@dataclass(frozen=True)
class Contact:
    """Where a rank's liveness port listens: the IPv4 addresses of its host (most likely
    reachable first), the port (0: it has none) and the token it answers with."""

    addresses: tuple[str, ...]
    port: int
    token: bytes


# -- this process's port ----------------------------------------------------------------------


class LivenessPort:
    """The listening socket and its accept thread: open for the rest of the process's life."""

    def __init__(self) -> None:
        self.token = os.urandom(TOKEN_BYTES)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # close-on-exec (PEP 446)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._answer, name="liveness-port", daemon=True)
        self.thread.start()

    def _answer(self) -> None:
        """Blocking accept (the GIL is released while it waits): write the token, close."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self.sock.fileno() < 0:
                    return  # closed (tests only)
                time.sleep(0.1)  # EMFILE and the like: never spin
                continue
            try:
                conn.settimeout(PROBE_TIMEOUT_S)
                conn.sendall(self.token)
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self.sock.close()


_port: LivenessPort | None = None
_port_lock = threading.Lock()


def own_contact() -> Contact:
    """This process's contact, its port opened on the first call (later calls: the same one).
    Contact(..., port=0) when no socket could be made: then others cannot tell it has gone."""
    global _port
    with _port_lock:
        if _port is None:
            try:
                _port = LivenessPort()
            except OSError as error:
                log.warning("no liveness port (%s): other hosts cannot tell whether this rank has exited", error)
                return Contact(host_addresses(), 0, b"")
        return Contact(host_addresses(), _port.port, _port.token)


def host_addresses() -> tuple[str, ...]:
    """This host's IPv4 addresses other than loopback and link-local: the primary address of each
    interface that is up, in index order (Linux ioctls; () elsewhere). Not the host name's
    address: resolving it may wait for a DNS server that does not answer (10 s on the emulated
    hosts), at every rank's start."""
    usable = [a for a in _interface_addresses() if not a.startswith(("127.", "169.254.", "0."))]
    return tuple(dict.fromkeys(usable))


def closest_first(addresses, mine) -> list[str]:
    """`addresses` sorted by the longest prefix (in bits) shared with any of `mine`: a peer's
    address on a subnet of this host is tried before its others (a stable sort)."""
    own = [int.from_bytes(socket.inet_aton(a), "big") for a in mine]

    def shared_bits(address: str) -> int:
        value = int.from_bytes(socket.inet_aton(address), "big")
        return max((32 - (value ^ other).bit_length() for other in own), default=0)

    return sorted(addresses, key=shared_bits, reverse=True)


def _interface_addresses() -> list[str]:
    """The primary IPv4 address of each interface that is up (Linux ioctls; [] elsewhere)."""
    addresses = []
    try:
        interfaces = socket.if_nameindex()
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return []
    with probe:
        for _, name in interfaces:
            request = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack_from("H", fcntl.ioctl(probe.fileno(), _SIOCGIFFLAGS, request), 16)[0]
                if flags & _IFF_UP:
                    answer = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
                    addresses.append(socket.inet_ntoa(answer[20:24]))
            except OSError:
                continue  # no IPv4 address on it
    return addresses


# -- probing others ---------------------------------------------------------------------------

ALIVE, SILENT, REFUSED, STRANGER, CLOSED, UNREACHABLE = (
    "alive",
    "silent",
    "refused",
    "stranger",
    "closed",
    "unreachable",
)


def knock(address: str, port: int, token: bytes, timeout: float = PROBE_TIMEOUT_S) -> str:
    """One connection to address:port: ALIVE (the token came back), SILENT (accepted, and not
    all of it within the timeout), REFUSED (refused or reset: nobody listens there), STRANGER
    (other bytes), CLOSED (closed without a byte) or UNREACHABLE (timed out, no route)."""
    try:
        conn = socket.create_connection((address, port), timeout=timeout)
    except ConnectionRefusedError:
        return REFUSED
    except OSError:
        return UNREACHABLE
    received = b""
    deadline = time.monotonic() + timeout
    with conn:
        try:
            while len(received) < len(token):
                conn.settimeout(max(1e-3, deadline - time.monotonic()))
                chunk = conn.recv(len(token) - len(received))
                if not chunk:
                    break
                received += chunk
        except ConnectionResetError:
            return REFUSED  # it closed with our connection still queued: it has exited
        except TimeoutError:
            return SILENT
        except OSError:
            return UNREACHABLE
    return ALIVE if received == token else STRANGER if received else CLOSED


class Prober:
    """Verdicts on ranks of other hosts (their Contact, by rank): True (its process has
    exited), False (it runs), None (cannot tell: never verified, or its host does not answer).
    One daemon thread does the probing, started on first use; it also probes a watched rank not
    verified yet (busy holding its GIL, or its host slow to answer, at start-up) every
    VERIFY_RETRY_S until it is."""

    def __init__(self, contacts: dict[int, Contact], mine: tuple[str, ...] | None = None):
        own = host_addresses() if mine is None and contacts else mine or ()
        self.contacts = {
            rank: replace(c, addresses=tuple(closest_first(c.addresses, own))) for rank, c in contacts.items()
        }
        self.verified: dict[int, str] = {}  # rank -> the address its token came back from
        self.results: dict[int, tuple[bool | None, float]] = {}  # rank -> (verdict, when)
        self.silent_until: dict[str, float] = {}  # address -> when it may be tried again
        self.queue: list[int] = []
        self.watched: set[int] = set()
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None

    def watch(self, ranks) -> None:
        """Probe these ranks now (and so verify their addresses while they are alive)."""
        with self.cond:
            for rank in ranks:
                if rank in self.contacts and self.contacts[rank].port and rank not in self.verified:
                    self.watched.add(rank)
                    self._enqueue(rank)

    def verdict(self, rank: int, wait: float = VERDICT_WAIT_S) -> bool | None:
        """The freshest verdict: a new probe when the last is older than FRESH_S, awaited at
        most `wait` seconds; else the previous verdict (None when there is none)."""
        if rank not in self.contacts:
            return None
        with self.cond:
            last = self.results.get(rank)
            if last is None or time.monotonic() - last[1] > FRESH_S:
                asked = time.monotonic()
                self._enqueue(rank)
                self.cond.wait_for(lambda: self.results.get(rank, (None, 0.0))[1] >= asked, timeout=wait)
            return self.results.get(rank, (None, 0.0))[0]

    def _enqueue(self, rank: int) -> None:
        """Under self.cond."""
        if rank not in self.queue:
            self.queue.append(rank)
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="liveness-prober", daemon=True)
            self.thread.start()
        self.cond.notify_all()

    def _unverified(self) -> list[int]:
        return sorted(self.watched - set(self.verified))

    def _run(self) -> None:
        while True:
            with self.cond:
                retry = VERIFY_RETRY_S if self._unverified() else None
                if not self.cond.wait_for(lambda: bool(self.queue), timeout=retry):
                    self.queue += self._unverified()
                    if not self.queue:
                        continue
                rank = self.queue.pop(0)
            verdict = self._probe(rank)
            with self.cond:
                self.results[rank] = (verdict, time.monotonic())
                self.cond.notify_all()

    def _probe(self, rank: int) -> bool | None:
        contact = self.contacts[rank]
        if not contact.port:
            return None
        verified = self.verified.get(rank)
        for address in (verified,) if verified else contact.addresses:
            if self.silent_until.get(address, 0.0) > time.monotonic():
                continue
            outcome = knock(address, contact.port, contact.token)
            if outcome == ALIVE:
                self.verified[rank] = address
                return False
            if outcome == UNREACHABLE:
                self.silent_until[address] = time.monotonic() + UNKNOWN_HOLD_S
            elif verified:
                # its socket is there but its process does not answer (stopped, or hung holding
                # the GIL); or nobody holds its port now
                return {SILENT: False, REFUSED: True, STRANGER: True}.get(outcome)
        return None
