"""The shard side of Sandblaster L-BFGS: named float64 vectors over one slice and the command set.

A shard owns the slice [start, stop) of the flat parameter vector (length L = stop - start) and keeps,
for that slice only, the work vectors `WORK_NAMES` and the L-BFGS history pairs. The coordinator never
sees a vector; it sends commands and receives per-shard partial scalars, which it sums.

Precision: every vector here is float64, parameters included. L-BFGS divides by dot products of
differences (s.y, y.y) that lose most of their digits in float32 over millions of coefficients; the
replicas still compute in float32 (publish `float32(x_trial)`, see `round32`).

A command is a plain tuple `(op, *args)` of strings, floats and ints (picklable, JSON-able):

| command | effect on the slice | result |
|---|---|---|
| ("dot", a, b) | - | partial a.b (float) |
| ("dots", ((a, b), ...)) | - | partial dots, float64 (n,) |
| ("scale", a, c) | a *= c | None |
| ("axpy", dst, a, c) | dst += c * a | None |
| ("mul", dst, a, b) | dst = a * b (coefficient-wise) | None |
| ("copy", dst, src) | dst = src | None |
| ("zero", dst) | dst = 0 | None |
| ("lincomb", dst, ((a, c), ...)) | dst = sum c * a (dst not among the a) | None |
| ("round32", dst) | dst = float64(float32(dst)) | None |
| ("push", pid) | new pair pid: s = x_trial - x, y = g_trial - g | None |
| ("pop_newest",) / ("drop_oldest",) / ("drop_all",) | history pruning | None |
| ("batch", (cmd, ...)) | each command in order | float64 (n,): all scalars, in order |

Names: the work vectors, the scratch is internal, and "s:<pid>" / "y:<pid>" name history vectors
(read-only: the coordinator caches their dot products). A work vector's array object never changes,
so an MPI window or receive buffer may be bound to it once.
"""

from collections import OrderedDict

import numpy as np

WORK_NAMES = ("x", "g", "d", "x_trial", "g_trial")
SCALAR_OPS = {"dot": 1}  # ops returning a fixed number of scalars; "dots" and "batch" vary


def n_scalars(cmd: tuple) -> int:
    """How many partial scalars `cmd` returns: the length of the buffer to reduce for it."""
    op = cmd[0]
    if op == "dots":
        return len(cmd[1])
    if op == "batch":
        return sum(n_scalars(c) for c in cmd[1])
    return SCALAR_OPS.get(op, 0)


class ShardVectors:
    """One shard's slice: work vectors (L,) float64 and up to `memory + 1` history pairs.

    `memory` pairs are used by a direction; one more may be held between a `push` and the
    coordinator's next command, which drops the newest (rejected pair) or the oldest (over memory).
    """

    def __init__(self, length: int, memory: int):
        if length < 0 or memory < 1:
            raise ValueError(f"need length >= 0 and memory >= 1, got {length}, {memory}")
        self.length, self.memory = length, memory
        self.vectors = {name: np.zeros(length) for name in WORK_NAMES}
        self._scratch = np.zeros(length)
        self.history: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()  # pid -> (s, y)
        self._spare: list[tuple[np.ndarray, np.ndarray]] = []  # arrays of dropped pairs, reused

    def load(self, name: str, values) -> None:
        """Set a work vector from an array of this slice's length (start-up, tests)."""
        np.copyto(self._work(name), np.asarray(values, dtype=np.float64).reshape(self.length))

    # What an iteration boundary needs (d, x_trial and g_trial are rewritten before they are read).
    def state(self, with_history: bool = True) -> dict:
        """{"x", "g": (L,), "pids": [k], "s", "y": k arrays (L,)}: views of this slice's own
        float64 arrays (no copies: a checkpoint writes them out before the next command)."""
        pids = list(self.history) if with_history else []
        return {
            "x": self.vectors["x"],
            "g": self.vectors["g"],
            "pids": pids,
            "s": [self.history[pid][0] for pid in pids],
            "y": [self.history[pid][1] for pid in pids],
        }

    def restore(self, state: dict) -> None:
        """Back to what state() returned (the same slice length; at most memory + 1 pairs)."""
        self.load("x", state["x"])
        self.load("g", state["g"])
        self._op_drop_all()
        pids = [int(pid) for pid in state["pids"]]
        if len(pids) > self.memory + 1:
            raise ValueError(f"{len(pids)} history pairs saved; this run keeps {self.memory}")
        for pid, s, y in zip(pids, state["s"], state["y"]):
            self.history[pid] = (
                np.array(s, np.float64).reshape(self.length),
                np.array(y, np.float64).reshape(self.length),
            )

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.vectors:
            return self.vectors[name]
        kind, _, pid = name.partition(":")
        if kind in ("s", "y") and pid.isdigit() and int(pid) in self.history:
            return self.history[int(pid)][kind == "y"]
        raise KeyError(f"no vector {name!r} on this shard")

    def _work(self, name: str) -> np.ndarray:
        if name not in self.vectors:
            raise KeyError(f"{name!r} is not a writable work vector")
        return self.vectors[name]

    def execute(self, cmd: tuple):
        """Run one command; returns a partial float, a float64 array of partials, or None."""
        op, args = cmd[0], cmd[1:]
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            raise ValueError(f"unknown vector command {op!r}")
        return handler(*args)

    # -- reductions (partial results over this slice) --
    def _op_dot(self, a, b) -> float:
        return float(np.dot(self[a], self[b]))

    def _op_dots(self, pairs) -> np.ndarray:
        return np.array([np.dot(self[a], self[b]) for a, b in pairs], dtype=np.float64)

    def _op_batch(self, cmds) -> np.ndarray:
        out = []  # scalars of every command, in order
        for cmd in cmds:
            result = self.execute(cmd)
            if result is not None:
                out.append(np.atleast_1d(result))
        return np.concatenate(out) if out else np.zeros(0)

    # -- vector updates (no result) --
    def _op_scale(self, a, c):
        self._work(a)[...] *= c

    def _op_axpy(self, dst, a, c):
        np.multiply(self[a], c, out=self._scratch)
        self._work(dst)[...] += self._scratch

    def _op_mul(self, dst, a, b):
        np.multiply(self[a], self[b], out=self._work(dst))

    def _op_copy(self, dst, src):
        np.copyto(self._work(dst), self[src])

    def _op_zero(self, dst):
        self._work(dst)[...] = 0.0

    def _op_round32(self, dst):
        out = self._work(dst)
        out[...] = out.astype(np.float32)

    def _op_lincomb(self, dst, terms):
        out = self._work(dst)
        if any(name == dst for name, _ in terms):
            raise ValueError(f"lincomb into {dst!r} reads {dst!r}")
        out[...] = 0.0
        for name, c in terms:
            np.multiply(self[name], c, out=self._scratch)
            out += self._scratch

    # -- history --
    def _op_push(self, pid):
        if pid in self.history or len(self.history) > self.memory:
            raise ValueError(f"push of pair {pid} with pairs {list(self.history)} (memory {self.memory})")
        s, y = self._spare.pop() if self._spare else (np.empty(self.length), np.empty(self.length))
        v = self.vectors
        np.subtract(v["x_trial"], v["x"], out=s)
        np.subtract(v["g_trial"], v["g"], out=y)
        self.history[pid] = (s, y)

    def _op_pop_newest(self):
        self._spare.append(self.history.popitem(last=True)[1])

    def _op_drop_oldest(self):
        self._spare.append(self.history.popitem(last=False)[1])

    def _op_drop_all(self):
        while self.history:
            self._op_drop_oldest()
