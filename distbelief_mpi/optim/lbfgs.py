"""The coordinator side of Sandblaster L-BFGS, a local cluster, and a plain NumPy reference.

The coordinator never holds a vector. It talks to a *cluster* with two calls:
  run_command(cmd) -> list of per-shard results (summed here; an MPI cluster may return [the sum])
  evaluate(point, grad) -> loss: replicas compute loss and gradient over the whole batch at the shards'
      vector `point`; the gradient lands in the shards' vector `grad`
The shards hold x, g, d, x_trial, g_trial and the (s, y) history (vector_ops.ShardVectors).

Two-loop recursion in coefficient space ("vector-free L-BFGS", Chen et al., NIPS 2014): the direction
is d = sum_j delta_j b_j over the basis b = {s_i, y_i, g}, so it needs only dot products between basis
vectors. The history never changes after a push, so the coordinator caches s_i.y_j and y_i.y_j and
asks only for the new pair's row plus g's dots: 5k + 1 partial scalars in ONE reduction (k <= m+1
pairs), against 2k dependent reductions for the textbook loops over distributed vectors.

Round trips per iteration when the first trial step is accepted (the usual case for L-BFGS):
  batch A, no scalars: [history pruning], lincomb d, lincomb x_trial = x + t d   (broadcast only)
  one evaluation at x_trial (the batch, on the replicas; its loss is the one reduced scalar)
  batch B, 5k + 1 scalars: push (s, y), x <- x_trial, g <- g_trial, dots   (ONE reduction)
Each further line-search trial costs one broadcast-only batch (x_trial) and one evaluation.

Line search: backtracking Armijo (c1 = 1e-4), first trial t = 1 (t = min(1, 1/|g|) without history),
backtracking by the safeguarded minimiser of the quadratic through f(0), f'(0) and f(t), clipped to
[0.1 t, 0.5 t]. Why: every trial is a full distributed pass over the batch, so trials must be few.
L-BFGS's scaled direction makes t = 1 acceptable nearly always, and Armijo needs only the loss, which
the evaluation already reduces; a Wolfe curvature test would add a reduction (g_trial.d) per trial and
extrapolation trials when it fails. The curvature Wolfe guarantees (s.y > 0) is enforced instead by
rejecting a pair with s.y <= curvature_eps |s| |y|. A failed search with history drops the history
and retries steepest descent once; failing that, the run stops ("line_search_failed").
"""

import math
import typing
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise

import numpy as np

from .vector_ops import ShardVectors, n_scalars


@dataclass(frozen=True)
class LbfgsOptions:
    max_iter: int = 100
    gtol: float = 1e-5  # stop when |g|_2 <= gtol
    ftol: float = 1e-9  # stop when (f_old - f) <= ftol * max(|f_old|, |f|, 1)
    max_evals: int = 10**9  # loss-and-gradient evaluations (distributed batch passes)
    c1: float = 1e-4  # Armijo sufficient decrease
    max_trials: int = 20  # line-search trials per search
    curvature_eps: float = 1e-8  # keep a pair only if s.y > eps |s| |y|


@dataclass
class LbfgsResult:
    loss: float
    grad_norm: float
    status: str  # gtol | ftol | max_iter | max_evals | line_search_failed | stopped
    iterations: int = 0
    evaluations: int = 0
    restarts: int = 0  # history dropped after a failed search or an ascent direction
    pairs_rejected: int = 0  # curvature test failed
    losses: list = field(default_factory=list)  # loss at x0 and after every iteration
    batches: int = 0  # command batches sent (coordinator path only)
    reductions: int = 0  # of which returned scalars


def line_search(try_step, f0: float, dg: float, t: float, opts: LbfgsOptions, evals_left: int):
    """Backtracking Armijo. try_step(t) -> f(x + t d). Returns (accepted, t, f_t, evaluations)."""
    ft, n = math.nan, 0
    while n < min(opts.max_trials, evals_left):
        ft, n = try_step(t), n + 1
        if math.isfinite(ft) and ft <= f0 + opts.c1 * t * dg:
            return True, t, ft, n
        curv = ft - f0 - dg * t  # > 0 here since Armijo failed and dg < 0
        t_q = -dg * t * t / (2 * curv) if math.isfinite(ft) else 0.1 * t
        t = min(max(t_q, 0.1 * t), 0.5 * t)
    return False, t, ft, n


def first_step(has_history: bool, gg: float) -> float:
    return 1.0 if has_history or gg <= 1.0 else 1.0 / math.sqrt(gg)


def converged(f_old: float, f: float, ftol: float) -> bool:
    return f_old - f <= ftol * max(abs(f_old), abs(f), 1.0)


def two_loop_terms(ids, sy, yy, sg, yg, gg):
    """Direction as lincomb terms over names, and d.g, from dots only (ids oldest -> newest).

    sy[(i, j)] = s_i.y_j, yy[(i, j)] = y_i.y_j, sg[i] = s_i.g, yg[i] = y_i.g, gg = g.g.
    """
    k = len(ids)
    if k == 0:
        return (("g", -1.0),), -gg
    SY = np.array([[sy[i, j] for j in ids] for i in ids])  # (k, k)
    YY = np.array([[yy[i, j] for j in ids] for i in ids])  # (k, k)
    sgv, ygv = np.array([sg[i] for i in ids]), np.array([yg[i] for i in ids])  # (k,)
    rho, alpha, c = 1.0 / np.diag(SY), np.zeros(k), np.zeros(k)
    for i in reversed(range(k)):  # q = g - sum_j alpha_j y_j
        alpha[i] = rho[i] * (sgv[i] - SY[i] @ alpha)
    gamma = SY[-1, -1] / YY[-1, -1]
    for i in range(k):  # r = gamma q + sum_l c_l s_l
        c[i] = alpha[i] - rho[i] * (gamma * (ygv[i] - YY[i] @ alpha) + SY[:, i] @ c)
    terms = (
        (("g", -gamma),)
        + tuple((f"y:{p}", gamma * a) for p, a in zip(ids, alpha))
        + tuple((f"s:{p}", -cl) for p, cl in zip(ids, c))
    )
    return terms, -(gamma * (gg - alpha @ ygv) + c @ sgv)


class _Mirror:
    """The coordinator's copy of the history's ids and dot products (the vectors stay on shards)."""

    def __init__(self):
        self.ids, self.next_id = [], 0
        self.sy, self.yy, self.sg, self.yg, self.gg = {}, {}, {}, {}, math.nan

    def push_request(self):
        """New pair id and the dots to ask for after pushing it (g already the new gradient)."""
        n, ids = self.next_id, self.ids + [self.next_id]
        pairs = [(f"s:{n}", f"y:{j}") for j in ids] + [(f"s:{j}", f"y:{n}") for j in ids[:-1]]
        pairs += [(f"y:{n}", f"y:{j}") for j in ids] + [(f"s:{n}", f"s:{n}")]
        pairs += [(f"s:{j}", "g") for j in ids] + [(f"y:{j}", "g") for j in ids] + [("g", "g")]
        return n, tuple(pairs)

    def push_result(self, n, v):
        """Record the dots of push_request; returns (s.y, s.s, y.y) of the new pair."""
        ids, k = self.ids + [n], len(self.ids) + 1
        self.ids, self.next_id = ids, n + 1
        for idx, j in enumerate(ids):
            self.sy[n, j], self.yy[n, j], self.yy[j, n] = v[idx], v[2 * k - 1 + idx], v[2 * k - 1 + idx]
            self.sg[j], self.yg[j] = v[3 * k + idx], v[4 * k + idx]
        for idx, j in enumerate(ids[:-1]):
            self.sy[j, n] = v[k + idx]
        self.gg = v[-1]
        return self.sy[n, n], v[3 * k - 1], self.yy[n, n]

    def drop(self, pid):
        self.ids.remove(pid)
        self.sg.pop(pid), self.yg.pop(pid)
        for table in (self.sy, self.yy):
            for key in [key for key in table if pid in key]:
                del table[key]

    def clear(self):
        for pid in list(self.ids):
            self.drop(pid)

    def to_json(self) -> dict:
        """Plain lists (JSON floats round-trip exactly): a checkpoint resumes bit-identically."""

        def table(t: dict) -> list:
            return [[i, j, v] for (i, j), v in sorted(t.items())]

        return {
            "ids": list(self.ids),
            "next_id": self.next_id,
            "sy": table(self.sy),
            "yy": table(self.yy),
            "sg": sorted(self.sg.items()),
            "yg": sorted(self.yg.items()),
            "gg": self.gg,
        }

    @classmethod
    def from_json(cls, saved: dict) -> "_Mirror":
        mirror = cls()
        mirror.ids, mirror.next_id, mirror.gg = [int(i) for i in saved["ids"]], int(saved["next_id"]), saved["gg"]
        mirror.sy = {(int(i), int(j)): v for i, j, v in saved["sy"]}
        mirror.yy = {(int(i), int(j)): v for i, j, v in saved["yy"]}
        mirror.sg, mirror.yg = ({int(i): v for i, v in saved[key]} for key in ("sg", "yg"))
        return mirror


def lbfgs(cluster, memory: int = 10, opts: LbfgsOptions = LbfgsOptions(), callback=None) -> LbfgsResult:
    """Run L-BFGS from the shards' "x"; on return the shards hold the final x and its gradient g.

    The loss must be the same function during a run (one fixed batch): the Armijo test compares
    evaluations at different points. The shards' history is dropped at the start. callback(result)
    runs after every iteration; a true return value stops the run (status "stopped").
    """
    return LbfgsRun(cluster, memory, opts, callback).run()


SAVED_COUNTERS = ("status", "iterations", "evaluations", "restarts", "pairs_rejected", "batches", "reductions")


class LbfgsRun:
    """One run of the coordinator: scalars only; every vector operation is a command to the shards.

    Checkpoints: snapshot() (from the callback, between iterations) returns the coordinator's whole
    state as JSON-able data once the shards' history matches it; LbfgsRun(..., state=that) continues
    from it, given shards restored to the x, g and history they held then, and takes exactly the
    steps an uninterrupted run takes.
    """

    def __init__(self, cluster, memory: int, opts: LbfgsOptions, callback=None, state: dict | None = None):
        self.cluster, self.memory, self.opts, self.callback = cluster, memory, opts, callback
        self.res, self.h = LbfgsResult(math.nan, math.nan, ""), _Mirror()
        self.pending: list[tuple] = [("drop_all",)]  # no-result commands, sent with the next batch
        self.f = math.nan  # the loss at the shards' x
        self.restored = state is not None  # then x's loss, gradient and dots are known
        if state is not None:
            self._restore(state)

    def snapshot(self) -> dict:
        """The state to resume from; first sends pending history pruning, so the shards agree
        (one more command batch than a run without checkpoints: res.batches counts it)."""
        if self.pending:
            self.send([])
        return {"f": self.f, "mirror": self.h.to_json(), **{key: getattr(self.res, key) for key in SAVED_COUNTERS}}

    def _restore(self, state: dict) -> None:
        self.h, self.f, self.pending = _Mirror.from_json(state["mirror"]), state["f"], []
        for key in SAVED_COUNTERS:
            setattr(self.res, key, state[key])
        self.res.losses = [self.f]  # the losses before the snapshot are in the metrics log

    def send(self, cmds) -> np.ndarray:
        """One command batch; returns its reduced scalars (float64, n_scalars of the batch)."""
        cmd = ("batch", tuple(self.pending) + tuple(cmds))
        self.pending = []
        per_shard = self.cluster.run_command(cmd)
        self.res.batches += 1
        self.res.reductions += n_scalars(cmd) > 0
        return np.sum([np.asarray(r, np.float64).reshape(-1) for r in per_shard], axis=0)

    def try_step(self, t: float) -> float:
        self.send([("lincomb", "x_trial", (("x", 1.0), ("d", t)))])
        return self.cluster.evaluate("x_trial", "g_trial")

    def restart(self):
        """Forget the history (after a failed search or an ascent direction)."""
        self.pending.append(("drop_all",))
        self.h.clear()
        self.res.restarts += 1

    def accept(self):
        """Push (s, y), move to x_trial, and fetch every dot the next direction needs."""
        h = self.h
        pid, pairs = h.push_request()
        v = self.send([("push", pid), ("copy", "x", "x_trial"), ("copy", "g", "g_trial"), ("dots", pairs)])
        sy, ss, yy = h.push_result(pid, v)
        if not sy > self.opts.curvature_eps * math.sqrt(ss * yy):
            self.pending.append(("pop_newest",))
            h.drop(pid)
            self.res.pairs_rejected += 1
        elif len(h.ids) > self.memory:
            self.pending.append(("drop_oldest",))
            h.drop(h.ids[0])

    def run(self) -> LbfgsResult:
        res, opts = self.res, self.opts
        if not self.restored:
            self.f = self.cluster.evaluate("x", "g")
            res.evaluations, res.losses = 1, [self.f]
            self.h.gg = self.send([("dots", (("g", "g"),))])[0]
        h = self.h
        while not res.status:
            if math.sqrt(h.gg) <= opts.gtol or res.iterations >= opts.max_iter:
                res.status = "gtol" if math.sqrt(h.gg) <= opts.gtol else "max_iter"
                break
            terms, dg = two_loop_terms(h.ids, h.sy, h.yy, h.sg, h.yg, h.gg)
            if dg >= 0:  # not a descent direction (rounding): forget the history
                self.restart()
                terms, dg = two_loop_terms([], {}, {}, {}, {}, h.gg)
            self.pending.append(("lincomb", "d", terms))
            ok, _, ft, n = line_search(
                self.try_step, self.f, dg, first_step(bool(h.ids), h.gg), opts, opts.max_evals - res.evaluations
            )
            res.evaluations += n
            if not ok and h.ids and res.evaluations < opts.max_evals:
                self.restart()
                continue
            if not ok:
                res.status = "max_evals" if res.evaluations >= opts.max_evals else "line_search_failed"
                break
            self.accept()
            res.iterations, f_old, self.f = res.iterations + 1, self.f, ft
            res.losses.append(self.f)
            res.status = (
                "ftol"
                if converged(f_old, self.f, opts.ftol)
                else "max_evals"
                if res.evaluations >= opts.max_evals
                else ""
            )
            if self.callback is not None and self.callback(res) and not res.status:
                res.status = "stopped"
        if self.pending:
            self.send([])  # leave the shards' history consistent with the mirror
        res.loss, res.grad_norm = self.f, math.sqrt(h.gg)
        return res


class LocalCluster:
    """K ShardVectors over contiguous slices of one process's vector: tests and a local reference.

    loss_and_grad(x (n,) float64) -> (loss, grad (n,)); ranges: [(start, stop)] covering 0..n.
    """

    def __init__(self, loss_and_grad, x0, n_shards: int = 1, memory: int = 10, ranges=None):
        x0 = np.asarray(x0, np.float64)
        cuts = np.linspace(0, x0.size, n_shards + 1).round().astype(int)
        self.ranges = list(ranges or pairwise(cuts))
        self.shards = [ShardVectors(b - a, memory) for a, b in self.ranges]
        self.loss_and_grad, self.commands, self.evaluations = loss_and_grad, 0, 0
        self.scatter("x", x0)

    def run_command(self, cmd) -> list:
        self.commands += 1
        return [shard.execute(cmd) for shard in self.shards]

    def evaluate(self, point: str, grad: str) -> float:
        self.evaluations += 1
        loss, g = self.loss_and_grad(self.gather(point))
        self.scatter(grad, g)
        return float(loss)

    def gather(self, name: str) -> np.ndarray:
        return np.concatenate([shard[name] for shard in self.shards])

    def scatter(self, name: str, values) -> None:
        for shard, (a, b) in zip(self.shards, self.ranges):
            shard.load(name, values[a:b])


def reference_lbfgs(loss_and_grad, x0, memory: int = 10, opts: LbfgsOptions = LbfgsOptions()):
    """Textbook single-process L-BFGS with the same line search and rules. Returns (x, LbfgsResult)."""
    x = np.array(x0, np.float64)
    f, g = loss_and_grad(x)
    res = LbfgsResult(math.nan, math.nan, "", evaluations=1, losses=[f])
    pairs: deque[tuple[np.ndarray, np.ndarray]] = deque()
    while not res.status:
        if math.sqrt(g @ g) <= opts.gtol or res.iterations >= opts.max_iter:
            res.status = "gtol" if math.sqrt(g @ g) <= opts.gtol else "max_iter"
            break
        d = -_two_loop(g, pairs)
        if d @ g >= 0:
            pairs.clear()
            res.restarts, d = res.restarts + 1, -g
        trial: dict[str, typing.Any] = {}  # x, f, g of the last trial
        ok, _, ft, n = line_search(
            partial(_trial, loss_and_grad, x, d, trial),
            f,
            d @ g,
            first_step(bool(pairs), g @ g),
            opts,
            opts.max_evals - res.evaluations,
        )
        res.evaluations += n
        if not ok and pairs and res.evaluations < opts.max_evals:
            pairs.clear()
            res.restarts += 1
            continue
        if not ok:
            res.status = "max_evals" if res.evaluations >= opts.max_evals else "line_search_failed"
            break
        s, y = trial["x"] - x, trial["g"] - g
        if s @ y > opts.curvature_eps * math.sqrt((s @ s) * (y @ y)):
            pairs.append((s, y))
            if len(pairs) > memory:
                pairs.popleft()
        else:
            res.pairs_rejected += 1
        x, g, f_old, f = trial["x"], trial["g"], f, ft
        res.iterations += 1
        res.losses.append(f)
        res.status = (
            "ftol" if converged(f_old, f, opts.ftol) else "max_evals" if res.evaluations >= opts.max_evals else ""
        )
    res.loss, res.grad_norm = f, math.sqrt(g @ g)
    return x, res


def _trial(loss_and_grad, x, d, out: dict, t: float) -> float:
    out["x"] = x + t * d
    out["f"], out["g"] = loss_and_grad(out["x"])
    return float(out["f"])


def _two_loop(g, pairs):
    """H g by the textbook two-loop recursion over (s, y) pairs, oldest first."""
    q, alphas = g.copy(), []
    for s, y in reversed(pairs):
        alphas.append((s @ q) / (s @ y))
        q -= alphas[-1] * y
    r = q * ((pairs[-1][0] @ pairs[-1][1]) / (pairs[-1][1] @ pairs[-1][1])) if pairs else q
    for (s, y), a in zip(pairs, reversed(alphas)):
        r += (a - (y @ r) / (s @ y)) * s
    return r
