"""The seqlock over a shard's two published parameter buffers: both sides in one place.

A shard publishes its slice (L,) float32 in two alternating buffers of its data window
(comm/param_server.py), VERSION % 2 being the current one. To publish version v + 1 it:

    1. raises WRITING to v + 1 (atomic word), then Syncs the window,
    2. writes buffer (v + 1) % 2 (the one readers are not told to read),
    3. Syncs, then sets VERSION to v + 1.

A reader reads VERSION = v, Gets buffer v % 2 (all of it, or a part), then reads WRITING:
WRITING <= v + 1 means the shard has not started rewriting buffer v % 2 (that would take
WRITING = v + 2), so the copy is consistent; otherwise it retries. Nobody ever waits on a lock
held across computation. Used by the Downpour shard (each applied push) and the Sandblaster
shard (each published point).

A version may change a part of the slice only (a push of one partition's block, when a shard
holds several): step 2 then writes that part, after copying into the buffer the part the
previous version changed (the two buffers differ nowhere else), so whole-slice updates copy
nothing extra. A version can also be begun, written over a while (a push applied chunk by chunk
as it lands) and committed, or abandoned (a push found non-finite): nothing is published then,
and the part written joins the part where the buffers may differ.
"""

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .param_server import ParamServerWindows

# The seqlock's two words, at the start of every shard's control window (param_server.py).
VERSION, WRITING = 0, 1


class SeqlockWriter:
    """The shard's side: owns the two buffers (views into the window) and the version.

    shadows: pairs of private (L,) arrays that alternate with the buffers, e.g. Adagrad's
    accumulators: a version's shadows are written out of place in the same update as its
    parameters, so an abandoned update (a push found non-finite half-way) leaves both the
    published parameters and the current shadows untouched. shadows[i][0] holds the initial
    values (version 0)."""

    def __init__(
        self,
        windows: "ParamServerWindows",
        shard_id: int,
        initial: np.ndarray,
        shadows: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    ):
        self.windows, self.shard_id, self.length = windows, shard_id, len(initial)
        data = windows.local_data
        self.buffers = (data[: self.length], data[self.length : 2 * self.length])
        self.shadows = [tuple(pair) for pair in shadows]
        self.version = 0
        self.buffers[0][:] = initial
        self.differs = slice(0, self.length)  # where the two buffers may differ: the last version's part
        self.open: slice | None = None  # the part of the version begun and not yet committed
        windows.data_win.Sync()

    @property
    def current(self) -> np.ndarray:
        """The published parameters (L,), a view; never written while published."""
        return self.buffers[self.version % 2]

    @property
    def following(self) -> np.ndarray:
        """The buffer the next version is written into (L,), a view."""
        return self.buffers[(self.version + 1) % 2]

    def shadow(self, i: int, following: bool = False) -> np.ndarray:
        """Shadow i (L,) of the current version (or of the next one, being written)."""
        return self.shadows[i][(self.version + following) % 2]

    def restore(self, version: int, values: np.ndarray, shadows: Sequence[np.ndarray] = ()) -> None:
        """Publish values (L,) as `version` (a resumed run), with its shadows, before anyone reads."""
        self.version = version
        self.current[:] = values
        for i, shadow in enumerate(shadows):
            self.shadow(i)[:] = shadow
        self.differs = slice(0, self.length)
        self.windows.data_win.Sync()
        self.windows.write_words(self.shard_id, VERSION, [version, version])  # VERSION, WRITING

    def update(self, fill: Callable[[np.ndarray, np.ndarray], None]) -> int:
        """Publish the next version: fill(following, current) writes the new values into
        `following` (L,) reading `current` (L,). Returns the new version."""
        return self.update_part(slice(0, self.length), fill)

    def update_part(self, part: slice, fill: Callable[[np.ndarray, np.ndarray], None]) -> int:
        """Publish the next version, equal to the current one outside `part` (a slice of the
        L elements): fill(following, current) writes the new values of the part into
        `following` reading `current` (both (part length,) views). Returns the new version."""
        self.begin(part)
        fill(self.following[part], self.current[part])
        return self.commit()

    def begin(self, part: slice) -> None:
        """Start the next version, equal to the current one outside `part`: the caller then
        writes the part of `following` (and of each following shadow), as long as it takes,
        and commit()s or abandon()s. Readers meanwhile read the current version undisturbed."""
        if self.open is not None:
            raise RuntimeError(f"a version of part {self.open} is already begun")
        self.windows.write_words(self.shard_id, WRITING, [self.version + 1])
        self.windows.data_win.Sync()  # WRITING is raised before any store into the buffer
        if not (part.start <= self.differs.start and self.differs.stop <= part.stop):
            now, then = self.version % 2, (self.version + 1) % 2
            for pair in (self.buffers, *self.shadows):  # now equal to current outside `part`
                pair[then][self.differs] = pair[now][self.differs]
        self.open = part

    def commit(self) -> int:
        """Publish the version begun; returns it."""
        assert self.open is not None, "commit without begin"
        self.windows.data_win.Sync()
        self.differs, self.open = self.open, None
        self.version += 1
        self.windows.write_words(self.shard_id, VERSION, [self.version])
        return self.version

    def abandon(self) -> None:
        """Drop the version begun: nothing is published, the current version stays (WRITING
        stays at version + 1, which readers accept). The part written may now differ too."""
        assert self.open is not None, "abandon without begin"
        part, self.open = self.open, None
        self.differs = slice(min(part.start, self.differs.start), max(part.stop, self.differs.stop))

    def publish(self, values: np.ndarray) -> int:
        """Publish values (L,) as the next version; returns it."""
        return self.update(lambda following, _: following.__setitem__(slice(None), values))


class SeqlockReader:
    """A replica's side: consistent copies of any shard's published parameters."""

    def __init__(self, windows: "ParamServerWindows"):
        self.windows = windows
        self.retries = 0  # copies thrown away because the shard rewrote the buffer meanwhile

    def read(self, shard_id: int, out: np.ndarray, offset: int = 0) -> int:
        """out (n,) <- a consistent copy of shard `shard_id`'s parameters [offset, offset + n)
        (by default n = L: all of them); returns their version."""
        while True:
            version = self.windows.read_word(shard_id, VERSION)
            self.windows.get_params(shard_id, version, out, offset)
            if self.windows.read_word(shard_id, WRITING) <= version + 1:
                return version
            self.retries += 1
