"""The Sandblaster coordinator keeps shards and replicas informed that it is alive
(roles/sandblaster_cluster.py): pure, with a recording stand-in for the communicator."""

import time

from distbelief_mpi.comm.control import TAG_SB_COMMAND, TAG_SB_WORK
from distbelief_mpi.config import Optimizer
from distbelief_mpi.roles.sandblaster_cluster import PING, MpiCluster


class RecordingComm:
    def __init__(self):
        self.sent = []

    def send(self, message, dest, tag):
        self.sent.append((message, dest, tag))


def cluster(hung_after: float) -> MpiCluster:
    return MpiCluster(
        RecordingComm(), shard_ranks=[1, 2], replica_ranks=[3, 4], optimizer=Optimizer(), hung_after=hung_after
    )


def test_whoever_was_not_sent_anything_for_half_the_watchdog_time_is_pinged():
    c = cluster(hung_after=4.0)
    c.keep_alive()
    assert sorted(c.comm.sent, key=lambda s: s[1]) == [
        (PING, 1, TAG_SB_COMMAND),
        (PING, 2, TAG_SB_COMMAND),
        ({"ping": True}, 3, TAG_SB_WORK),
        ({"ping": True}, 4, TAG_SB_WORK),
    ]
    c.comm.sent.clear()
    c.next_ping_check = 0.0  # the next check is due
    c.last_sent = {rank: time.monotonic() - (3.0 if rank == 2 else 0.0) for rank in (1, 2, 3, 4)}
    c.keep_alive()  # only shard 2 has been sent nothing for over 2 s
    assert c.comm.sent == [(PING, 2, TAG_SB_COMMAND)]


def test_checks_are_rate_limited_but_everyone_goes_out_at_once():
    c = cluster(hung_after=4.0)
    c.keep_alive()
    c.comm.sent.clear()
    c.last_sent = {rank: 0.0 for rank in c.last_sent}  # long silent, but checked a moment ago
    c.keep_alive()
    assert c.comm.sent == []
    c.keep_alive(everyone=True)
    assert len(c.comm.sent) == 4


def test_no_watchdog_no_pings():
    c = cluster(hung_after=0.0)
    c.keep_alive(everyone=True)
    assert c.comm.sent == []
