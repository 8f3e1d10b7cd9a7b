"""The seqlock writer's part updates (comm/seqlock.py), without MPI: a version that changes one
part of the slice must publish the whole slice right, though only that part (and the part the
previous version changed) is written into the buffer being prepared."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from distbelief_mpi.comm.seqlock import VERSION, WRITING, SeqlockWriter


class FakeWindows:
    """What SeqlockWriter uses of ParamServerWindows: its local data and control words."""

    def __init__(self, length: int):
        self.local_data = np.full(2 * length, np.nan, np.float32)  # a buffer never written reads NaN
        self.words = {VERSION: 0, WRITING: 0}
        self.data_win = self

    def Sync(self) -> None:  # noqa: N802 - MPI's name
        pass

    def write_words(self, shard_id: int, first: int, values) -> None:
        for i, value in enumerate(values):
            self.words[first + i] = int(value)


parts = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=30)


@given(parts, st.booleans())
def test_part_updates_publish_the_whole_slice(updates, resumed):
    length = 40
    windows = FakeWindows(length)
    expected = np.arange(length, dtype=np.float32)
    writer = SeqlockWriter(windows, 0, expected)
    if resumed:
        expected = expected + 100
        writer.restore(7, expected)
    for step, (a, b) in enumerate(updates):
        part = slice(min(a, b), max(a, b))
        writer.update_part(part, lambda following, current, s=step: np.add(current, s + 1, out=following))
        expected[part] += step + 1
        np.testing.assert_array_equal(writer.current, expected)
        assert windows.words[VERSION] == windows.words[WRITING] == writer.version


def test_whole_slice_updates_copy_nothing_extra():
    windows = FakeWindows(8)
    writer = SeqlockWriter(windows, 0, np.zeros(8, np.float32))
    writer.update(lambda following, current: np.add(current, 1, out=following))
    writer.buffers[0][:] = -1  # the buffer the next version is written into: must not be read
    writer.update_part(slice(0, 8), lambda following, current: np.add(current, 1, out=following))
    np.testing.assert_array_equal(writer.current, np.full(8, 2, np.float32))


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.booleans()), min_size=1, max_size=30))
def test_abandoned_versions_publish_nothing_and_leave_shadows_untouched(updates):
    """Versions begun and abandoned half-written (a push found non-finite) change neither the
    published slice nor the shadows (Adagrad's accumulators), whatever parts come after."""
    length = 40
    windows = FakeWindows(length)
    expected, expected_shadow = np.arange(length, dtype=np.float32), np.full(length, 0.5, np.float32)
    shadows = (expected_shadow.copy(), np.full(length, np.nan, np.float32))
    writer = SeqlockWriter(windows, 0, expected, [shadows])
    for step, (a, b, keep) in enumerate(updates):
        part = slice(min(a, b), max(a, b))
        version = writer.version
        writer.begin(part)
        np.add(writer.current[part], step + 1, out=writer.following[part])
        np.add(writer.shadow(0)[part], 1, out=writer.shadow(0, following=True)[part])
        if keep:
            assert writer.commit() == version + 1
            expected[part] += step + 1
            expected_shadow[part] += 1
        else:
            writer.abandon()
            assert writer.version == version and windows.words[VERSION] == version
        np.testing.assert_array_equal(writer.current, expected)
        np.testing.assert_array_equal(writer.shadow(0), expected_shadow)
        assert windows.words[WRITING] <= writer.version + 1  # readers of the current version accept it
