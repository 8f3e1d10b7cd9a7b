"""Kernel benchmarks, ours vs a baseline measured side by side in one run (medians of repeats).

    python bench/kernels.py [--quick] [--threads N] [--repeats R] [--compare-threads M] [--rounds K]

1. One SGD training step of the paper's speech model (440 -> 4 x 2560 sigmoid -> 8192 softmax,
   batch 128, ~42M params): build_network + loss_and_grad + sgd_update_ vs PyTorch CPU.
2. A locally connected layer forward + backward: our Numba kernel vs a NumPy im2col baseline
   (sliding_window_view + batched matmul + strided col2im).
3. Threads: 1 vs M compute threads (set_compute_threads) in one process, rounds interleaved
   (1, M, 1, M, ...) so both see the same machine load: the locally connected fwd + bwd of [2],
   one SGD step of the locally connected network of jobs/fashion_lc_partitioned.toml (unpartitioned,
   28x28, batch 64) and the speech step of [1]. Medians over rounds; the ratio is t(1) / t(M).
"""

import argparse
import datetime
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# before NumPy, as under the `distbelief` command: it sets OpenBLAS's idle-thread timeout
import distbelief_mpi  # noqa: E402, F401, I001

import numpy as np  # noqa: E402
from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)

from distbelief_mpi.kernels import ACTIVATION_CODES, local_backward_, local_forward_, set_compute_threads, sgd_update_  # noqa: E402
from distbelief_mpi.kernels.thread_pool import threading_layer  # noqa: E402
from distbelief_mpi.model.network import build_network  # noqa: E402
from distbelief_mpi.model.spec import LayerSpec  # noqa: E402


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------- 1. speech model step
def sgd_step(specs, in_shape, n_out, batch, lr=0.01):
    """(one SGD step on a fixed random batch: loss_and_grad + sgd_update_, the parameter count)."""
    net = build_network(specs, in_shape, n_out)
    params, grad = net.init_params(0), np.empty(net.n_params, np.float32)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *in_shape)).astype(np.float32)
    y = rng.integers(0, n_out, batch)

    def step():
        net.loss_and_grad(params, x, y, grad)
        sgd_update_(params, grad, lr)

    return step, net.n_params


def speech_step(batch, hidden, depth, n_in, n_out):
    return sgd_step([LayerSpec("dense", units=hidden, activation="sigmoid")] * depth, (n_in,), n_out, batch)


def speech_ours(batch, hidden, depth, n_in, n_out, repeats):
    step, n_params = speech_step(batch, hidden, depth, n_in, n_out)
    return median_seconds(step, repeats), n_params


# jobs/fashion_lc_partitioned.toml's network, whole (one rank): 1x28x28 -> local 8 5x5 relu -> max 2 -> 128 relu -> 10
LC_NETWORK = [
    LayerSpec("local", filters=8, patch=5, stride=1, activation="relu"),
    LayerSpec("maxpool", size=2, stride=2),
    LayerSpec("dense", units=128, activation="relu"),
]


def speech_torch(batch, hidden, depth, n_in, n_out, repeats, threads, lr=0.01):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layers, width = [], n_in
    for _ in range(depth):
        layers += [torch.nn.Linear(width, hidden), torch.nn.Sigmoid()]
        width = hidden
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, n_out))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(batch, n_in)
    y = torch.randint(0, n_out, (batch,))

    def step():
        opt.zero_grad(set_to_none=False)
        loss_fn(model(x), y).backward()
        opt.step()

    return median_seconds(step, repeats)


# ---------------------------------------------------------------- 2. locally connected layer
def im2col_local_step(x, w, bias, dy, stride, patch):
    """NumPy baseline: forward (sigmoid) + backward of a locally connected layer via im2col.
    x (B, C, H, W), w (P, K, F), bias (P, F), dy (B, F, OH, OW). Returns (gw, gb, dx)."""
    b, c = x.shape[:2]
    win = np.lib.stride_tricks.sliding_window_view(x, (patch, patch), axis=(2, 3))
    win = win[:, :, ::stride, ::stride]  # (B, C, OH, OW, p, p)
    oh, ow = win.shape[2:4]
    cols = np.ascontiguousarray(win.transpose(2, 3, 0, 1, 4, 5)).reshape(oh * ow, b, -1)  # (P, B, K)
    z = np.matmul(cols, w)  # (P, B, F)
    z += bias[:, None, :]
    y = 1 / (1 + np.exp(-z))
    dz = dy.transpose(2, 3, 0, 1).reshape(oh * ow, b, -1) * (y * (1 - y))  # (P, B, F)
    gw = np.matmul(cols.transpose(0, 2, 1), dz)  # (P, K, F)
    gb = dz.sum(axis=1)
    dcols = np.matmul(dz, w.transpose(0, 2, 1)).reshape(oh, ow, b, c, patch, patch)
    dx = np.zeros_like(x)
    for i in range(patch):  # col2im: one strided add per patch offset
        for j in range(patch):
            dx[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride] += dcols[:, :, :, :, i, j].transpose(
                2, 3, 0, 1
            )
    return gw, gb, y.reshape(oh, ow, b, -1).transpose(2, 3, 0, 1), dx


def local_inputs(batch, c, hw, filters, patch, stride):
    rng = np.random.default_rng(0)
    oh = (hw - patch) // stride + 1
    k = c * patch * patch
    x = rng.standard_normal((batch, c, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((oh * oh, k, filters)) * 0.1).astype(np.float32)
    bias = np.zeros((oh * oh, filters), np.float32)
    dy = rng.standard_normal((batch, filters, oh, oh)).astype(np.float32)
    y, dx = np.empty_like(dy), np.empty_like(x)
    gw, gb = np.empty_like(w), np.empty_like(bias)
    code = ACTIVATION_CODES["sigmoid"]

    def ours():
        local_forward_(x, w, bias, stride, patch, code, y)
        local_backward_(x, w, y, dy.copy(), stride, patch, code, gw, gb, dx, True)

    return ours, (x, w, bias, dy), (y, gw, gb, dx)


def local_bench(batch, c, hw, filters, patch, stride, repeats):
    ours, (x, w, bias, dy), (y, gw, gb, dx) = local_inputs(batch, c, hw, filters, patch, stride)
    ours()
    ref_gw, ref_gb, ref_y, ref_dx = im2col_local_step(x, w, bias, dy, stride, patch)
    for mine, ref in ((y, ref_y), (gw, ref_gw), (gb, ref_gb), (dx, ref_dx)):
        np.testing.assert_allclose(mine, ref, rtol=1e-3, atol=1e-3)
    t_ours = median_seconds(ours, repeats)
    t_ref = median_seconds(lambda: im2col_local_step(x, w, bias, dy, stride, patch), repeats)
    return t_ours, t_ref


# ---------------------------------------------------------------- 3. threads, 1 vs M
def interleaved(step, threads, rounds, min_block_s=0.05):
    """{n: median seconds per step on n threads}, rounds interleaved over `threads`.

    Each sample times a block of steps long enough (min_block_s) for the timer and a thread
    pool's wake-up not to dominate; every thread count gets one warm-up block first.
    """
    set_compute_threads(threads[0])
    step()
    start = time.perf_counter()
    step()
    per_block = max(1, int(min_block_s / max(time.perf_counter() - start, 1e-6)))
    for n in threads:
        set_compute_threads(n)
        for _ in range(per_block):
            step()
    times: dict[int, list[float]] = {n: [] for n in threads}
    for _ in range(rounds):
        for n in threads:
            set_compute_threads(n)
            start = time.perf_counter()
            for _ in range(per_block):
                step()
            times[n].append((time.perf_counter() - start) / per_block)
    return {n: statistics.median(ts) for n, ts in times.items()}, times


def thread_rows(quick, many, rounds):
    """[(what, {threads: seconds}), ...] for the three steps of section 3."""
    local = (8, 4, 16, 8, 5, 1) if quick else (64, 8, 32, 16, 5, 1)
    lc_step, _, _ = local_inputs(*local)
    lc_net, _ = sgd_step(LC_NETWORK, (1, 28, 28), 10, 16 if quick else 64)
    speech = speech_step(*((32, 256, 2, 44, 512) if quick else (128, 2560, 4, 440, 8192)))[0]
    b, c, hw, f, p, s = local
    rows = []
    for what, step in (
        (f"locally connected fwd + bwd of [2] (batch {b}, ({c}, {hw}, {hw}), {f} filters {p}x{p}/{s})", lc_step),
        (f"LC network SGD step (fashion_lc_partitioned.toml's layers, batch {16 if quick else 64})", lc_net),
        ("speech step of [1] (fwd + bwd + SGD)", speech),
    ):
        medians, _ = interleaved(step, (1, many), rounds)
        rows.append((what, medians))
    return rows


def print_threads(quick, many, rounds):
    load = os.getloadavg()[0]
    layer = threading_layer()
    print(f"\n[3] threads: 1 vs {many} in one process, {rounds} interleaved rounds, medians; Numba layer {layer}")
    idle = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT")}
    print(f"    idle threads: {', '.join(f'{k}={v}' for k, v in idle.items())}")
    rows = thread_rows(quick, many, rounds)
    for what, medians in rows:
        one, more = medians[1], medians[many]
        print(f"    {what}")
        print(f"        1 thread {one * 1e3:9.2f} ms   {many} threads {more * 1e3:9.2f} ms   ratio {one / more:.2f}x")
    print(f"    load average (1 min) before {load:.2f}, after {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("    targets (2 vs 1): LC fwd + bwd >= 1.7x, LC network step >= 1.6x, speech step not slower than before")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats (smoke test)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compare-threads", type=int, default=2, help="section 3: 1 vs this many threads (0: skip)")
    ap.add_argument("--rounds", type=int, default=15, help="section 3: interleaved rounds")
    args = ap.parse_args(argv)
    set_compute_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    print(f"date     {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(
        f"machine  {cpu_model()}, {os.cpu_count()} logical CPUs; {args.threads} compute thread(s); "
        f"numpy {np.__version__}; medians of {repeats} repeats"
    )

    shape = (32, 256, 2, 44, 512) if args.quick else (128, 2560, 4, 440, 8192)
    batch, hidden, depth, n_in, n_out = shape
    t_ours, n_params = speech_ours(*shape, repeats)
    print(
        f"\n[1] speech step {n_in} -> {depth} x {hidden} sigmoid -> {n_out} softmax, batch {batch}, "
        f"{n_params / 1e6:.1f}M params (fwd + bwd + SGD)"
    )
    print(f"    ours      {t_ours * 1e3:9.1f} ms  {batch / t_ours:9.1f} examples/s")
    try:
        import torch
    except ImportError:
        print("    PyTorch not installed, skipped")
    else:
        t_torch = speech_torch(*shape, repeats, args.threads)
        print(f"    pytorch   {t_torch * 1e3:9.1f} ms  {batch / t_torch:9.1f} examples/s (torch {torch.__version__})")
        print(f"    ratio ours/pytorch throughput: {t_torch / t_ours:.2f}x  (target >= 0.9x)")

    local = (8, 4, 16, 8, 5, 1) if args.quick else (64, 8, 32, 16, 5, 1)
    b, c, hw, f, p, s = local
    t_ours, t_ref = local_bench(*local, repeats)
    print(
        f"\n[2] locally connected fwd + bwd, batch {b}, input ({c}, {hw}, {hw}), patch {p}, "
        f"stride {s}, {f} filters, sigmoid"
    )
    print(f"    ours (numba + per-position BLAS) {t_ours * 1e3:9.1f} ms")
    print(f"    numpy im2col baseline            {t_ref * 1e3:9.1f} ms")
    print(f"    speed-up: {t_ref / t_ours:.2f}x  (target >= 2x)")

    if args.compare_threads > 1:
        print_threads(args.quick, args.compare_threads, 3 if args.quick else args.rounds)


if __name__ == "__main__":
    main()
