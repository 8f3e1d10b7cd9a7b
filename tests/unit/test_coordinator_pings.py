"""The Sandblaster coordinator keeps shards and replicas informed that it is alive
(roles/sandblaster/cluster.py): pure, with a recording stand-in for the messenger."""

import time

from distbelief_mpi.comm.messages import SHARD_COMMAND, WORK, KeepAlive
from distbelief_mpi.config import Optimizer
from distbelief_mpi.roles.sandblaster.cluster import ShardsAndReplicas


class RecordingMessenger:
    def __init__(self):
        self.sent = []

    def send(self, channel, record, dest):
        self.sent.append((record, dest, channel))


def cluster(hung_after: float) -> ShardsAndReplicas:
    return ShardsAndReplicas(
        RecordingMessenger(), shard_ranks=[1, 2], replica_ranks=[3, 4], optimizer=Optimizer(), hung_after=hung_after
    )


def test_whoever_was_not_sent_anything_for_half_the_watchdog_time_is_pinged():
    c = cluster(hung_after=4.0)
    c.keep_alive()
    assert sorted(c.messenger.sent, key=lambda s: s[1]) == [
        (KeepAlive(), 1, SHARD_COMMAND),
        (KeepAlive(), 2, SHARD_COMMAND),
        (KeepAlive(), 3, WORK),
        (KeepAlive(), 4, WORK),
    ]
    c.messenger.sent.clear()
    c.next_ping_check = 0.0  # the next check is due
    c.last_sent = {rank: time.monotonic() - (3.0 if rank == 2 else 0.0) for rank in (1, 2, 3, 4)}
    c.keep_alive()  # only shard 2 has been sent nothing for over 2 s
    assert c.messenger.sent == [(KeepAlive(), 2, SHARD_COMMAND)]


def test_checks_are_rate_limited_but_everyone_goes_out_at_once():
    c = cluster(hung_after=4.0)
    c.keep_alive()
    c.messenger.sent.clear()
    c.last_sent = {rank: 0.0 for rank in c.last_sent}  # long silent, but checked a moment ago
    c.keep_alive()
    assert c.messenger.sent == []
    c.keep_alive(everyone=True)
    assert len(c.messenger.sent) == 4


def test_no_watchdog_no_pings():
    c = cluster(hung_after=0.0)
    c.keep_alive(everyone=True)
    assert c.messenger.sent == []
