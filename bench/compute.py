"""Local compute: per layer and per model, our kernels vs the NumPy reference and PyTorch CPU.

    python bench/compute.py [--threads N] [--repeats R] [--quick] [--out-dir DIR]

Every figure is examples/s (median of repeats, one run) and, where the layer has weights, the
achieved GFLOP/s as a fraction of this machine's float32 matrix-multiply peak, measured first in
the same run (np.matmul of two n x n matrices, 2 n^3 flops). FLOPs: forward 2 * MACs, backward
4 * MACs (weight gradient + input gradient; 2 * MACs for a model's first layer, which needs no
input gradient). PyTorch is an optional peer (same thread count), never a dependency. Before
timing, each implementation's forward output (per model: first loss) is checked against ours.
"""

import argparse
import datetime
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kernels import median_seconds  # bench/kernels.py (bench/ is on sys.path when run as a script)
from machine import cpu_model  # bench/machine.py
from model_parallel import models  # bench/model_parallel.py: the "local" and "speech" models

from distbelief_mpi.kernels import LCN_EPS, set_compute_threads, sgd_update_  # noqa: E402
from distbelief_mpi.kernels import reference as ref
from distbelief_mpi.model.image_layers import LCN, L2Pool2D, LocallyConnected2D, MaxPool2D  # noqa: E402
from distbelief_mpi.model.layers import Dense  # noqa: E402
from distbelief_mpi.model.network import build_network  # noqa: E402

F32 = np.float32


def weight_count(layer) -> int:
    """MACs per example of a dense / local layer = its weights (params minus one bias per output)."""
    return layer.n_params - int(np.prod(layer.out_shape)) if layer.n_params else 0


def matmul_peak(n: int, repeats: int) -> float:
    """GFLOP/s of a float32 (n, n) @ (n, n) matmul."""
    a, b = (np.random.default_rng(i).standard_normal((n, n), dtype=F32) for i in (0, 1))
    out = np.empty_like(a)
    return 2 * n**3 / median_seconds(lambda: np.matmul(a, b, out=out), repeats) / 1e9


# ---------------------------------------------------------------- PyTorch twins of our layers
def torch_local(x, w, b, layer):
    """x (B, C, H, W), w (P, K, F), b (P, F) -> pre-activation (B, F, OH, OW), via unfold + bmm."""
    import torch

    cols = torch.nn.functional.unfold(x, layer.patch, stride=layer.stride).permute(2, 0, 1)  # (P, B, K)
    z = torch.baddbmm(b[:, None, :], cols, w)  # (P, B, F)
    return z.permute(1, 2, 0).reshape((x.shape[0],) + layer.out_shape)


def torch_lcn(x, size):
    """kernels/lcn.py's LCN: the window mean over channels and a cropped size x size window is
    avg_pool2d (padding not counted) of the channel mean."""
    import torch

    def pool(a):  # (B, 1, H, W) -> (B, 1, H, W)
        return torch.nn.functional.avg_pool2d(a, size, 1, size // 2, count_include_pad=False)

    v = x - pool(x.mean(1, keepdim=True))
    return v / torch.sqrt(LCN_EPS + pool((v * v).mean(1, keepdim=True)))


def torch_layer(layer, p):
    """(function x -> y, trainable tensors): our `layer` in PyTorch, weights copied from p."""
    import torch

    F = torch.nn.functional
    act = {"relu": torch.relu, "sigmoid": torch.sigmoid}.get(getattr(layer, "activation", ""), lambda z: z)
    if layer.kind in ("dense", "output", "local"):
        w, b = layer.split(p)
        w = w.T if layer.kind != "local" else w  # nn.Linear's weight is (U, D)
        w, b = (torch.tensor(np.ascontiguousarray(a)).requires_grad_() for a in (w, b))
        if layer.kind == "local":
            return (lambda x: act(torch_local(x, w, b, layer))), [w, b]
        return (lambda x: act(F.linear(x.flatten(1), w, b))), [w, b]
    if layer.kind == "maxpool":
        return (lambda x: F.max_pool2d(x, layer.size, layer.stride)), []
    if layer.kind == "l2pool":
        return (lambda x: F.lp_pool2d(x, 2, layer.size, layer.stride)), []
    return (lambda x: torch_lcn(x, layer.size)), []


# ---------------------------------------------------------------- per layer: fwd + bwd (need_dx)
def ours_step(layer, p, x, dy):
    grad, work = np.empty_like(p), np.empty_like(dy)

    def step():
        y, cache = layer.forward(p, x)
        np.copyto(work, dy)  # backward may overwrite its dy
        layer.backward(p, cache, work, grad, need_dx=True)
        return y

    return step


def numpy_step(layer, p, x, dy):
    """The NumPy twins of kernels/reference.py (plain matmuls for dense); each returns y."""
    kind = layer.kind
    if kind == "dense":
        w, b = layer.split(p)  # w (D, U), b (U,)

        def dense():
            y = 1 / (1 + np.exp(-(x @ w + b)))  # (B, U)
            dz = dy * y * (1 - y)
            _ = (x.T @ dz, dz.sum(axis=0), dz @ w.T)  # grad w (D, U), grad b (U,), dx (B, D)
            return y

        return dense
    if kind == "local":
        w, b = layer.split(p)  # w (P, K, F), b (P, F)

        def local():
            y = ref.local_forward(x, w, b, layer.stride, layer.patch, layer.activation)
            ref.local_backward(x, w, y, dy, layer.stride, layer.patch, layer.activation)
            return y

        return local
    if kind == "maxpool":

        def maxpool():
            ref.maxpool_backward(x, dy, layer.size, layer.stride)
            return ref.maxpool_forward(x, layer.size, layer.stride)

        return maxpool
    if kind == "l2pool":

        def l2pool():
            y = ref.l2pool_forward(x, layer.size, layer.stride)
            ref.l2pool_backward(x, y, dy, layer.size, layer.stride)
            return y

        return l2pool

    def lcn():
        y, _ = ref.lcn_forward(x, layer.size)
        ref.lcn_backward(x, dy, layer.size)
        return y

    return lcn


def torch_step(layer, p, x, dy):
    import torch

    fn, params = torch_layer(layer, p)
    xt, dyt = torch.tensor(x).requires_grad_(), torch.tensor(dy)

    def step():
        for t in params + [xt]:
            t.grad = None
        y = fn(xt)
        y.backward(dyt)
        return y.detach().numpy()

    return step


def layer_cases(quick):
    """(label, batch, layer): the shapes of the issue; --quick only shrinks the batches."""
    b_dense, b_img = (16, 2) if quick else (128, 32)
    return [
        ("dense 2560->2560 sigmoid", b_dense, Dense((2560,), 2560, "sigmoid", F32)),
        ("local 1x64x64 7x7 16f relu", b_img, LocallyConnected2D((1, 64, 64), 16, 7, 1, "relu", F32)),
        ("maxpool 2x2 on 16x58x58", b_img, MaxPool2D((16, 58, 58), 2, 2, F32)),
        ("l2pool 2x2 on 16x58x58", b_img, L2Pool2D((16, 58, 58), 2, 2, F32)),
        ("lcn 5 on 16x29x29", b_img, LCN((16, 29, 29), 5, F32)),
    ]


def bench_layers(quick, repeats, impls, peak):
    rows = []
    for label, batch, layer in layer_cases(quick):
        rng, p = np.random.default_rng(0), np.zeros(layer.n_params, F32)
        layer.init(p)
        x = rng.standard_normal((batch,) + layer.in_shape, dtype=F32)
        dy = rng.standard_normal((batch,) + layer.out_shape, dtype=F32)
        steps = {name: make(layer, p, x, dy) for name, make in impls.items()}
        want = steps["ours"]().copy()
        for name, step in steps.items():  # same maths before timing
            np.testing.assert_allclose(step(), want, rtol=1e-3, atol=1e-3, err_msg=f"{label}: {name}")
        flops = 6 * weight_count(layer) * batch
        for name, step in steps.items():
            rows.append(row(label, batch, name, median_seconds(step, repeats), flops, peak))
    return rows


# ---------------------------------------------------------------- per model: one SGD step
def model_flops(net) -> int:
    """Per example: 2 MACs forward + 2 for the weight gradient + 2 for dx (not the first layer)."""
    return sum((6 if i else 4) * weight_count(layer) for i, layer in enumerate(net.layers))


def model_steps(net, params, x, y, lr=0.01):
    """{'ours': step, 'torch': step}: loss_and_grad + sgd_update_ vs autograd + optim.SGD."""
    grad = np.empty_like(params)

    def ours():
        loss, _ = net.loss_and_grad(params, x, y, grad)
        sgd_update_(params, grad, lr)
        return loss

    steps = {"ours": ours}
    try:
        import torch
    except ImportError:
        return steps
    fns, tensors = zip(*(torch_layer(layer, params[block]) for layer, block in zip(net.layers, net.param_slices)))
    opt = torch.optim.SGD([t for ts in tensors for t in ts], lr=lr)
    xt, yt = torch.tensor(x), torch.tensor(y.astype(np.int64))

    def step():
        opt.zero_grad()
        h = xt
        for fn in fns:  # (B, *in_shape) -> ... -> logits (B, classes)
            h = fn(h)
        loss = torch.nn.functional.cross_entropy(h, yt)
        loss.backward()
        opt.step()
        return loss.item()

    steps["torch"] = step
    return steps


def bench_models(quick, repeats, peak):
    rows = []
    for name, (shape, classes, batch, specs) in models().items():
        batch = max(4, batch // 8) if quick else batch
        net = build_network(specs, shape, classes)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch,) + shape, dtype=F32)
        y = rng.integers(0, classes, batch)
        steps = model_steps(net, net.init_params(0), x, y)
        losses = {impl: step() for impl, step in steps.items()}  # first step, same weights
        assert np.allclose(list(losses.values()), losses["ours"], rtol=1e-3), f"{name}: losses {losses}"
        label = f"{name} ({net.n_params / 1e6:.1f}M params)"
        for impl, step in steps.items():
            rows.append(row(label, batch, impl, median_seconds(step, repeats), model_flops(net) * batch, peak))
    return rows


# ---------------------------------------------------------------- report
def row(label, batch, impl, seconds, flops, peak):
    gflops = flops / seconds / 1e9 if flops else None
    return {
        "what": label,
        "batch": batch,
        "impl": impl,
        "seconds": seconds,
        "examples_per_s": batch / seconds,
        "gflops": gflops,
        "fraction_of_peak": gflops / peak if gflops else None,
    }


def table(rows, first):
    ours = {r["what"]: r["seconds"] for r in rows if r["impl"] == "ours"}
    lines = [
        f"| {first} | batch | impl | ms / step | examples/s | GFLOP/s | of peak | ours speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gf = f"{r['gflops']:.1f} | {r['fraction_of_peak']:.1%}" if r["gflops"] else "- | -"
        lines.append(
            f"| {r['what']} | {r['batch']} | {r['impl']} | {r['seconds'] * 1e3:.2f} | "
            f"{r['examples_per_s']:,.0f} | {gf} | {r['seconds'] / ours[r['what']]:.2f}x |"
        )
    return lines


def report(info, layer_rows, model_rows):
    return "\n".join(
        [
            "## Local compute",
            "",
            f"Machine: {info['machine']}; {info['threads']} thread(s) (Numba, BLAS, PyTorch); {info['date']}; "
            f"`{info['command']}`; medians of {info['repeats']} repeats; torch {info['torch'] or 'not installed'}.",
            "",
            f"Matrix-multiply peak: **{info['peak_gflops']:.1f} GFLOP/s** (float32 np.matmul "
            f"{info['peak_n']}x{info['peak_n']}, this run). FLOPs = 2 x MACs forward + 4 x MACs backward.",
            "",
            "### Per layer (forward + backward with input gradient)",
            "",
            *table(layer_rows, "layer"),
            "",
            "### Per model (one SGD step: forward, backward, update)",
            "",
            *table(model_rows, "model"),
            "",
        ]
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small batches, 512 peak matmul, 2 repeats")
    ap.add_argument("--out-dir", help="also write compute.md and compute.json here")
    args = ap.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    impls = {"ours": ours_step, "numpy": numpy_step}
    try:
        import torch

        torch.set_num_threads(args.threads)
        impls["torch"] = torch_step
    except ImportError:
        torch = None
    set_compute_threads(args.threads)
    limits = threadpool_limits(args.threads)  # noqa: F841 (every BLAS / OpenMP pool loaded, torch's too)
    n = 512 if args.quick else 2048
    info = {
        "machine": cpu_model(),
        "threads": args.threads,
        "repeats": repeats,
        "quick": args.quick,
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "command": shlex.join(["python"] + sys.argv),
        "torch": torch and torch.__version__,
        "numpy": np.__version__,
        "peak_n": n,
        "peak_gflops": matmul_peak(n, max(repeats, 3)),
    }
    layer_rows = bench_layers(args.quick, repeats, impls, info["peak_gflops"])
    model_rows = bench_models(args.quick, repeats, info["peak_gflops"])
    text = report(info, layer_rows, model_rows)
    print(text)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compute.md").write_text(text)
        (out / "compute.json").write_text(json.dumps({**info, "layers": layer_rows, "models": model_rows}, indent=1))


if __name__ == "__main__":
    main()
