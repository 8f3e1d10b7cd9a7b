"""faults.replica_loss = replace, the pure parts: the spec it accepts, the spec a replacement
runs, and the message endpoint's rules (comm/message_endpoint.py) with a stand-in messenger
whose "shard" answers as shard_rescue.py does."""

import dataclasses

import numpy as np
import pytest

from distbelief_mpi.comm.message_endpoint import MessageEndpoint
from distbelief_mpi.comm.messages import FETCH, FETCHED, MESSAGE_PUSH, PUSH_TAKEN, FetchReply, PushTaken
from distbelief_mpi.comm.replica_endpoint import FetchItem, PushItem
from distbelief_mpi.config import ConfigError, load_job
from distbelief_mpi.errors import RankHung
from distbelief_mpi.roles.downpour.replacement import replacement_spec
from tests.mpi.runner import REPO

DOWNPOUR = str(REPO / "jobs" / "digits_downpour.toml")


def test_replace_is_accepted_for_downpour_and_refused_where_it_cannot_work():
    spec = load_job(DOWNPOUR, ['faults.replica_loss="replace"'])
    assert spec.faults.replica_loss == "replace"
    with pytest.raises(ConfigError) as sandblaster:
        load_job(str(REPO / "jobs" / "digits_sandblaster.toml"), ['faults.replica_loss="replace"'])
    problems = sandblaster.value.problems
    assert any("faults.replica_loss" in p and "replace is for optimizer.algorithm" in p for p in problems)
    with pytest.raises(ConfigError) as partitioned:
        load_job(DOWNPOUR, ['faults.replica_loss="replace"', "topology.partitions_per_replica=2"])
    assert any("replace needs unpartitioned replicas" in p for p in partitioned.value.problems)


def test_a_replacement_runs_inline_in_its_main_thread_and_is_never_told_to_leave():
    spec = load_job(DOWNPOUR, ['faults.inject="leave"', "faults.inject_replica=2", "optimizer.overlap_comm=true"])
    runs = replacement_spec(spec)
    assert runs.optimizer.transfers == "inline" and not runs.optimizer.overlap_comm
    assert runs.faults.inject == "none"
    assert dataclasses.replace(runs, optimizer=spec.optimizer, faults=spec.faults) == spec  # nothing else changes


class Done:
    """A completed MPI request."""

    def wait(self):
        return None


class ShardsOverMessages:
    """A stand-in Messenger: shard s (rank 10 + s) holds params[s] at version[s]; pushes are
    taken when take() is called, as a busy shard's would be, or at once with auto_take."""

    def __init__(self, params: list[np.ndarray], auto_take: bool = False):
        self.params, self.version, self.auto_take = params, [7] * len(params), auto_take
        self.answering = True  # False: fetch requests queue up unanswered (a shard asleep)
        self.unanswered: list = []
        self.replies: list = []  # (channel, record, source) for the replica
        self.pushes: list = []

    # -- the endpoint's side
    def send(self, channel, record, dest):
        if channel is FETCH:
            self.unanswered.append((record, dest))
            if self.answering:
                self.answer()

    def answer(self):
        for record, dest in self.unanswered:
            shard = dest - 10
            part = self.params[shard][record.offset : record.offset + record.length]
            self.replies.append((FETCHED, FetchReply(self.version[shard], part.copy()), dest))
        self.unanswered.clear()

    def post(self, channel, record, dest):
        assert channel is MESSAGE_PUSH
        self.pushes.append((dest - 10, record))
        if self.auto_take:
            self.take(dest - 10)
        return Done()

    def receive_all(self, channel):
        taken = [(record, source) for ch, record, source in self.replies if ch is channel]
        self.replies = [reply for reply in self.replies if reply[0] is not channel]
        return taken

    def waiting(self, channel, source):
        return any(ch is channel and from_ == source for ch, _, from_ in self.replies)

    def receive(self, channel, source):
        return self.wait(channel, source)

    def wait(self, channel, source, on_wait=None):
        for index, (ch, record, from_) in enumerate(self.replies):
            if ch is channel and from_ == source:
                del self.replies[index]
                return record
        on_wait()  # nothing will ever come here: the stand-in answers synchronously
        raise AssertionError(f"waited for {channel.name} from {source}, which never answers")

    # -- the test's side
    def take(self, shard: int):
        self.replies.append((PUSH_TAKEN, PushTaken(), 10 + shard))


def endpoint(hung_after: float = 0.0, auto_take: bool = False) -> tuple[MessageEndpoint, ShardsOverMessages]:
    shards = ShardsOverMessages([np.arange(6, dtype=np.float32), np.arange(4, dtype=np.float32) + 100], auto_take)
    return MessageEndpoint(shards, [10, 11], replica_id=2, hung_after=hung_after), shards


def test_a_fetch_copies_each_shards_part_and_returns_their_versions():
    ep, shards = endpoint()
    shards.version = [7, 9]
    a, b = np.zeros(3, np.float32), np.zeros(2, np.float32)
    _, versions = ep.exchange([], [FetchItem(0, a, 2), FetchItem(1, b)])
    assert versions == [7, 9]
    np.testing.assert_array_equal(a, [2, 3, 4])
    np.testing.assert_array_equal(b, [100, 101])


def test_fetches_go_ahead_each_takes_the_reply_asked_for_at_the_fetch_before():
    ep, shards = endpoint()
    out = np.zeros(6, np.float32)
    assert ep.fetch(0, out) == 7  # the first waits; the next request goes out at once
    shards.params[0][:] = -1  # the shard moves on; the request already answered holds version 7
    shards.version[0] = 8
    assert ep.fetch(0, out) == 7 and out[0] == 0
    shards.answering = False  # asleep from now: the request this fetch makes stays unanswered
    assert ep.fetch(0, out) == 8 and out[0] == -1
    out[:] = 5
    assert ep.fetch(0, out) == 8 and out[0] == 5  # no reply yet: the replica keeps its own parameters
    shards.answer()
    assert ep.fetch(0, out) == 8 and out[0] == -1


def test_a_push_is_refused_until_the_shard_has_taken_the_one_before():
    ep, shards = endpoint()
    grad = np.ones(6, np.float32)
    assert ep.exchange([PushItem(0, grad, 3, 2)], [])[0] == [True]
    grad[:] = 5  # the replica zeroes or reuses its buffer at once: the record holds a copy
    assert shards.pushes[0][1].grad.tolist() == [1] * 6 and shards.pushes[0][1].steps == 2
    assert ep.exchange([PushItem(0, grad, 4, 1), PushItem(1, grad[:4], 4, 1)], [])[0] == [False, True]
    assert not ep.slot_free(0)
    shards.take(0)
    assert ep.slot_free(0)
    assert ep.exchange([PushItem(0, grad, 4, 1)], [])[0] == [True]
    assert [shard for shard, _ in shards.pushes] == [0, 1, 0]


def test_push_all_returns_only_once_every_shard_has_taken_its_push():
    ep, shards = endpoint(auto_take=True)
    ep.push_all([PushItem(0, np.ones(6, np.float32), 0, 1), PushItem(1, np.ones(4, np.float32), 0, 1)])
    assert ep.in_flight == [None, None] and len(shards.pushes) == 2


def test_a_shard_that_never_takes_a_push_is_hung_after_the_watchdog_time():
    ep, _ = endpoint(hung_after=1e-9)
    ep.exchange([PushItem(0, np.ones(6, np.float32), 0, 1)], [])
    with pytest.raises(RankHung, match="shard 0 has answered replacement replica 2 nothing"):
        ep.push_all([])  # waits for the push in flight


def test_a_long_collective_beats_the_watchdog_and_its_errors_reach_the_caller(monkeypatch):
    import time

    from distbelief_mpi.comm import rescue

    beats = []
    monkeypatch.setattr(rescue.watchdog, "beat", lambda: beats.append(time.monotonic()))
    assert rescue.beating_while(lambda: time.sleep(0.6) or 42) == 42
    assert len(beats) >= 3  # every 0.25 s while the helper thread works
    with pytest.raises(ZeroDivisionError):
        rescue.beating_while(lambda: 1 / 0)
