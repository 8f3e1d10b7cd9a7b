"""Sandblaster L-BFGS under real mpiexec: a coordinator, 2 shards and 3 replicas (6 ranks).

Softmax regression with an L2 penalty is convex with one minimum, so the distributed run can
be compared with a single-process L-BFGS (same memory, same line search: optim/lbfgs.py's
reference) iteration by iteration, and with scipy's L-BFGS at convergence."""

import json

import numpy as np
import pytest

from distbelief_mpi.data.hdf5 import read_split
from distbelief_mpi.model.network import build_network
from distbelief_mpi.optim.lbfgs import LbfgsOptions, reference_lbfgs
from distbelief_mpi.optim.portions import cut_portions
from tests.mpi.runner import REPO, assert_all_ranks, run_mpi

JOB = str(REPO / "jobs" / "digits_sandblaster.toml")
L2 = 1e-3
SOFTMAX = ["model.layers=[]", f"optimizer.l2_penalty={L2}", "optimizer.lbfgs_memory=5", "run.eval_every=0"]


def train(tmp_path, digits_h5, sets, name="run", n=6):
    overrides = [item for key_value in [f"data.path={digits_h5}", *sets] for item in ("--set", key_value)]
    run = run_mpi(
        n,
        ["distbelief", "train", JOB, "--run-dir", str(tmp_path / name), "--no-progress", *overrides],
        tmp_path / f"{name}-results",
        timeout=300,
    )
    assert_all_ranks(run, n)
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    lines = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return summary, [line["train_loss"] for line in lines if line["kind"] == "train"]


def softmax_objective(digits_h5, dtype):
    """The job's objective computed in one process: mean cross-entropy over the training split
    with our network (float32, as replicas compute it) or in float64 NumPy (for scipy)."""
    x, y = read_split(digits_h5, "train")
    network = build_network((), x.shape[1:], 10)
    grad32 = np.empty(network.n_params, np.float32)

    def network_loss(w):
        loss, _ = network.loss_and_grad(w.astype(np.float32), x, y, grad32)
        return loss + 0.5 * L2 * float(w @ w), grad32.astype(np.float64) + L2 * w

    def numpy_loss(w):  # the same model in float64: W (64, 10) then b (10,)
        flat = x.reshape(len(x), -1).astype(np.float64)
        weights, bias = w[:-10].reshape(flat.shape[1], 10), w[-10:]
        z = flat @ weights + bias
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        dz = (np.exp(logp) - np.eye(10)[y]) / len(y)
        loss = -logp[np.arange(len(y)), y].mean() + 0.5 * L2 * float(w @ w)
        return loss, np.concatenate([(flat.T @ dz).ravel(), dz.sum(axis=0)]) + L2 * w

    return (network_loss if dtype == "float32" else numpy_loss), network.init_params(0).astype(np.float64)


def test_distributed_lbfgs_follows_the_single_process_reference(tmp_path, digits_h5):
    summary, losses = train(tmp_path, digits_h5, [*SOFTMAX, "run.steps=25"])
    loss_and_grad, x0 = softmax_objective(digits_h5, "float32")
    _, reference = reference_lbfgs(loss_and_grad, x0, 5, LbfgsOptions(max_iter=25, gtol=0, ftol=0))
    assert summary["steps"] == 25 and len(losses) == 25
    # Same iterates up to float32 summation order (portions summed on shards vs one batch mean).
    np.testing.assert_allclose(losses, reference.losses[1:26], rtol=2e-4)
    # Every result is accounted for: each portion is issued once and counted once per batch pass;
    # a backup's result is either a discarded duplicate or arrives after its pass ended.
    portions = len(cut_portions(1437, 1437 // (8 * 3)))  # the batch loop's default portion size
    assert summary["portions_issued"] == portions * summary["batches"]
    assert summary["duplicates_discarded"] + summary["late_results_discarded"] == summary["backups_issued"]


def test_converged_loss_matches_scipy(tmp_path, digits_h5):
    scipy_optimize = pytest.importorskip("scipy.optimize")
    summary, losses = train(tmp_path, digits_h5, [*SOFTMAX, "run.steps=400"])
    assert summary["stopped_on"].startswith("converged"), summary
    loss_and_grad, x0 = softmax_objective(digits_h5, "float64")
    best = scipy_optimize.minimize(
        loss_and_grad, x0, jac=True, method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-10, "ftol": 1e-15}
    )
    assert abs(losses[-1] - best.fun) <= 1e-4 * best.fun, (losses[-1], best.fun)


def test_every_portion_counts_once_with_backups_and_duplicated_results(tmp_path, digits_h5):
    """Backups are handed out as soon as every portion of a pass is issued, and replica 1 sends
    every result twice: the losses must be those of a run without backups or duplicates (a
    portion counted twice would move them by percents)."""
    plain, plain_losses = train(
        tmp_path, digits_h5, [*SOFTMAX, "run.steps=8", "optimizer.backup_tasks=false"], name="plain"
    )
    raced, raced_losses = train(
        tmp_path,
        digits_h5,
        [
            *SOFTMAX,
            "run.steps=8",
            "optimizer.backup_tasks=true",
            "optimizer.backup_after=0.0",
            'faults.inject="duplicate"',
            "faults.inject_replica=1",
        ],
        name="raced",
    )
    assert plain["backups_issued"] == 0 and plain["duplicates_discarded"] == 0
    assert raced["backups_issued"] > 0, raced
    assert raced["duplicates_discarded"] >= raced["replica_portions"][1] - raced["late_results_discarded"] > 0, raced
    np.testing.assert_allclose(raced_losses, plain_losses, rtol=1e-4)


def test_backups_take_over_a_slowed_replicas_portions(tmp_path, digits_h5):
    """The mechanism, not its timing: what the batch time gains is measured by bench/stragglers.py
    (a wall-time ratio asserted here failed on a loaded CI machine: 2.15x against a 2x bound).
    A 30-example digits portion computes in about 0.03 ms, so the straggler is 300x slow (about
    10 ms a portion): at 5x its extra 0.1 ms drowned in scheduling delays (0 of 33 backups won in
    one CI run); at 300x, under 5 CPU burners, backups won 10-15 times in each of 3 runs."""
    sets = ["run.steps=20", "optimizer.portion_examples=30", 'faults.inject="slow"', "faults.inject_replica=2"]
    slowed, _ = train(tmp_path, digits_h5, [*sets, "faults.slow_factor=300"], name="slowed")
    assert slowed["backups_won"] > 0, slowed
    portions = slowed["replica_portions"]  # computed per replica: the fast ones do the straggler's share
    assert portions[2] < min(portions[:2] + portions[3:]), slowed


def test_digits_mlp_reaches_95_percent(tmp_path, digits_h5):
    summary, _ = train(tmp_path, digits_h5, [])
    assert summary["test_accuracy"] >= 0.95, summary
    for key in ("batches", "portions_issued", "backups_issued", "backups_won", "duplicates_discarded"):
        assert key in summary
