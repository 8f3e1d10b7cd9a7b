import importlib

import numpy as np
import pytest

from distbelief_mpi.optim.lbfgs import (
    LbfgsOptions,
    LbfgsRun,
    LocalCluster,
    lbfgs,
    reference_lbfgs,
)
from distbelief_mpi.optim.vector_ops import ShardVectors, n_scalars


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """Threaded BLAS on small matrices is ~10-100x slower on this project's busy 2-core machines."""
    from threadpoolctl import threadpool_limits

    for module in ("scipy.optimize", "sklearn.datasets"):  # load their BLAS / OpenMP first
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def softmax_digits():
    """Mean cross-entropy of an L2-regularised linear softmax on sklearn's digits: 650 parameters."""
    from sklearn.datasets import load_digits

    x, labels = load_digits(return_X_y=True)
    x, onehot, lam = x / 16.0, np.eye(10)[labels], 1e-3  # x (1797, 64), onehot (1797, 10)

    def loss_and_grad(w):  # w (64 * 10 + 10,)
        W, b = w[:640].reshape(64, 10), w[640:]
        z = x @ W + b
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        dz = (np.exp(logp) - onehot) / len(x)
        loss = -np.mean(logp[np.arange(len(x)), labels]) + 0.5 * lam * np.sum(W * W)
        return loss, np.concatenate([(x.T @ dz + lam * W).ravel(), dz.sum(axis=0)])

    return loss_and_grad, np.zeros(650)


@pytest.mark.parametrize("n_shards", [1, 2, 3])
def test_sharded_commands_match_the_reference(softmax_digits, n_shards):
    loss_and_grad, x0 = softmax_digits
    opts = LbfgsOptions(max_iter=40, gtol=0, ftol=0)
    x_ref, ref = reference_lbfgs(loss_and_grad, x0, 5, opts)
    cluster = LocalCluster(loss_and_grad, x0, n_shards, memory=5)
    res = lbfgs(cluster, 5, opts)
    assert (res.status, res.iterations, res.evaluations) == (ref.status, ref.iterations, ref.evaluations)
    np.testing.assert_allclose(res.losses, ref.losses, rtol=1e-10)
    np.testing.assert_allclose(cluster.gather("x"), x_ref, rtol=0, atol=1e-10 * np.abs(x_ref).max())
    np.testing.assert_allclose(cluster.gather("g"), loss_and_grad(x_ref)[1], atol=1e-10)
    # one reduction per iteration (+1 at the start); one broadcast-only batch per evaluation
    assert res.reductions == res.iterations + 1
    assert res.batches == res.reductions + res.evaluations - 1 + 1  # + the final history trim


def test_final_loss_matches_scipy(softmax_digits):
    optimize = pytest.importorskip("scipy.optimize")
    loss_and_grad, x0 = softmax_digits
    best = optimize.minimize(
        loss_and_grad, x0, jac=True, method="L-BFGS-B", options={"maxiter": 1000, "gtol": 1e-9, "ftol": 1e-15}
    )
    res = lbfgs(LocalCluster(loss_and_grad, x0, 2, memory=10), 10, LbfgsOptions(max_iter=150, gtol=1e-6, ftol=1e-13))
    assert abs(res.loss - best.fun) <= 1e-4 * abs(best.fun)


def quadratic(n=30, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = q @ np.diag(np.logspace(0, 2, n)) @ q.T  # SPD, condition number 100
    b = rng.normal(size=n)
    return (lambda x: (0.5 * x @ a @ x - b @ x, a @ x - b)), np.linalg.solve(a, b)


def test_quadratic_reaches_the_minimiser_with_uneven_and_empty_slices():
    loss_and_grad, x_star = quadratic()
    cluster = LocalCluster(loss_and_grad, np.zeros(30), memory=8, ranges=[(0, 0), (0, 7), (7, 30), (30, 30)])
    res = lbfgs(cluster, 8, LbfgsOptions(max_iter=200, gtol=1e-6, ftol=0))
    assert res.status == "gtol" and res.grad_norm <= 1e-6  # |x - x*| <= |g| / lambda_min
    np.testing.assert_allclose(cluster.gather("x"), x_star, atol=1e-6)


@pytest.mark.parametrize("memory", [1, 3])
def test_history_never_exceeds_memory_when_a_direction_is_built(memory):
    loss_and_grad, _ = quadratic()
    seen = []

    class Watching(LocalCluster):
        def run_command(self, cmd):
            if any(c[:2] == ("lincomb", "d") for c in cmd[1]):
                out = super().run_command(cmd)
                seen.append([len(s.history) for s in self.shards])
                return out
            return super().run_command(cmd)

    cluster = Watching(loss_and_grad, np.zeros(30), 2, memory=memory)
    res = lbfgs(cluster, memory, LbfgsOptions(max_iter=30, gtol=0, ftol=0))
    assert res.iterations == 30 and max(max(s) for s in seen) == memory
    assert all(len(s.history) == memory for s in cluster.shards)
    assert list(cluster.shards[0].history) == list(range(30 - memory, 30))


def test_rosenbrock_nonconvex_agrees_with_reference():
    def rosen(x):
        f = np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
        g = np.zeros_like(x)
        g[:-1] = -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
        g[1:] += 200 * (x[1:] - x[:-1] ** 2)
        return f, g

    x0, opts = np.full(6, -1.2), LbfgsOptions(max_iter=300, gtol=1e-8, ftol=0)
    x_ref, ref = reference_lbfgs(rosen, x0, 4, opts)
    cluster = LocalCluster(rosen, x0, 3, memory=4)
    res = lbfgs(cluster, 4, opts)
    assert ref.status == res.status == "gtol"
    np.testing.assert_allclose(cluster.gather("x"), np.ones(6), atol=1e-6)
    np.testing.assert_allclose(x_ref, np.ones(6), atol=1e-6)


def test_nonfinite_trial_losses_backtrack_and_a_hopeless_search_stops():
    def barrier(x):  # -sum log(1 - x^2) - 5 sum x: infinite outside (-1, 1)
        if np.any(np.abs(x) >= 1):
            return np.inf, np.zeros_like(x)
        return -np.sum(np.log1p(-x * x)) - 5 * x.sum(), 2 * x / (1 - x * x) - 5

    res = lbfgs(LocalCluster(barrier, np.zeros(4), 2, memory=5), 5, LbfgsOptions(gtol=1e-9, ftol=0))
    assert res.status == "gtol" and res.evaluations > res.iterations + 1
    wrong = lbfgs(LocalCluster(lambda x: (x @ x, -2 * x), np.ones(3)), 5, LbfgsOptions())
    assert wrong.status == "line_search_failed" and wrong.iterations == 0


def test_vector_commands_match_numpy():
    rng, length = np.random.default_rng(1), 13
    shard, vals = ShardVectors(length, 2), {n: rng.normal(size=length) for n in ("x", "g", "d", "x_trial", "g_trial")}
    for name, v in vals.items():
        shard.load(name, v)
    cmds = (
        ("dot", "x", "g"),
        ("axpy", "d", "g", 0.5),
        ("scale", "x", -2.0),
        ("mul", "g_trial", "x", "g"),
        ("dots", (("d", "d"), ("x", "g_trial"))),
        ("push", 7),
        ("lincomb", "x_trial", (("s:7", 2.0), ("y:7", 3.0))),
        ("copy", "g", "x_trial"),
        ("round32", "g"),
    )
    out = shard.execute(("batch", cmds))
    x, g, d = -2 * vals["x"], vals["g"], vals["d"] + 0.5 * vals["g"]
    gt = x * g
    s, y = vals["x_trial"] - x, gt - g
    assert out.shape == (n_scalars(("batch", cmds)),) == (3,)
    np.testing.assert_allclose(out, [vals["x"] @ g, d @ d, x @ gt], rtol=1e-14)
    np.testing.assert_allclose(shard["x_trial"], 2 * s + 3 * y, rtol=1e-14)
    np.testing.assert_array_equal(shard["g"], (2 * s + 3 * y).astype(np.float32))
    shard.execute(("zero", "d"))
    assert not shard["d"].any() and shard.execute(("batch", ())).shape == (0,)


def test_history_is_read_only_and_bounded():
    shard = ShardVectors(4, 1)
    shard.execute(("push", 0)), shard.execute(("push", 1))  # memory + 1 may be held
    for bad in [("push", 2), ("axpy", "s:0", "x", 1.0), ("lincomb", "d", (("d", 1.0),)), ("nope",)]:
        with pytest.raises((ValueError, KeyError)):
            shard.execute(bad)
    shard.execute(("drop_oldest",))
    assert list(shard.history) == [1]
    shard.execute(("push", 2)), shard.execute(("pop_newest",)), shard.execute(("drop_all",))
    assert not shard.history and ShardVectors(0, 1).execute(("dot", "x", "x")) == 0.0


def test_callback_stops_and_a_second_run_starts_from_the_shards_x():
    loss_and_grad, x_star = quadratic()
    cluster, seen = LocalCluster(loss_and_grad, np.zeros(30), 2, memory=4), []
    first = lbfgs(cluster, 4, callback=lambda r: seen.append(r.iterations) or r.iterations == 5)
    assert first.status == "stopped" and seen == [1, 2, 3, 4, 5]
    second = lbfgs(cluster, 4, LbfgsOptions(max_iter=200, gtol=1e-6, ftol=0))  # shards hold 4 old pairs
    assert second.status == "gtol" and second.losses[0] == first.loss
    np.testing.assert_allclose(cluster.gather("x"), x_star, atol=1e-6)


def test_a_run_resumed_from_a_snapshot_takes_the_uninterrupted_steps(softmax_digits):
    """Checkpoint at iteration 7 (memory 3: a pair is pruned by then), through JSON and fresh
    shards, then continue: every later loss and the final x equal the uninterrupted run's exactly."""
    import copy
    import json

    loss_and_grad, x0 = softmax_digits
    opts = LbfgsOptions(max_iter=15, gtol=0, ftol=0)
    whole_cluster = LocalCluster(loss_and_grad, x0, 2, memory=3)
    whole = lbfgs(whole_cluster, 3, opts)
    cluster, saved = LocalCluster(loss_and_grad, x0, 2, memory=3), {}

    def checkpoint_at_7(result):
        if result.iterations == 7:
            saved["run"] = json.loads(json.dumps(run.snapshot()))
            saved["shards"] = [copy.deepcopy(shard.state()) for shard in cluster.shards]  # state() gives views
        return result.iterations == 7  # then "the job is killed"

    run = LbfgsRun(cluster, 3, opts, checkpoint_at_7)
    assert run.run().status == "stopped" and len(saved["shards"][0]["pids"]) == 3
    fresh = LocalCluster(loss_and_grad, np.ones_like(x0), 2, memory=3)
    for shard, state in zip(fresh.shards, saved["shards"]):
        shard.restore(state)
    resumed = LbfgsRun(fresh, 3, opts, state=saved["run"]).run()
    assert (resumed.status, resumed.iterations, resumed.evaluations) == (whole.status, 15, whole.evaluations)
    assert resumed.losses == whole.losses[7:]
    assert np.array_equal(fresh.gather("x"), whole_cluster.gather("x"))


def test_shard_vectors_state_round_trips_and_refuses_too_many_pairs():
    shard = ShardVectors(4, 2)
    shard.load("x", np.arange(4.0)), shard.load("x_trial", np.ones(4)), shard.execute(("push", 5))
    state = shard.state()
    other = ShardVectors(4, 2)
    other.restore(state)
    assert list(other.history) == [5] and np.array_equal(other["s:5"], shard["s:5"])
    assert np.array_equal(other["x"], shard["x"]) and shard.state(with_history=False)["pids"] == []
    with pytest.raises(ValueError, match="history pairs"):
        ShardVectors(4, 1).restore({**state, "pids": [1, 2, 3], "s": np.zeros((3, 4)), "y": np.zeros((3, 4))})
