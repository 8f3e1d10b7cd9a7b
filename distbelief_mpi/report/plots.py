"""The report's PNG figures (matplotlib, Agg canvas; nothing is ever shown on screen).

Figures are built with `matplotlib.figure.Figure` and its Agg canvas directly, not through
pyplot: no global figure state, no GUI backend, and the backend of a process that imports
this module (a notebook, say) is left alone. Output is deterministic: same runs, same bytes.
"""

import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FuncFormatter, PercentFormatter

from .load import Run

FIGSIZE = (9.0, 5.6)
DPI = 110
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
METADATA = {"Software": None}  # no matplotlib version in the file: same bytes across versions

CURVES = {  # file -> (series attribute, x axis, title)
    "loss_vs_time.png": ("train_loss", "time", "Training loss vs wall time"),
    "accuracy_vs_time.png": ("test_accuracy", "time", "Test accuracy vs wall time"),
    "loss_vs_examples.png": ("train_loss", "examples", "Training loss vs examples processed"),
    "accuracy_vs_examples.png": ("test_accuracy", "examples", "Test accuracy vs examples processed"),
}


def color(index: int) -> str:
    return COLORS[index % len(COLORS)]


def _new_figure(figsize=FIGSIZE) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> None:
    fig.savefig(path, format="png", dpi=DPI, metadata=METADATA)


def _legend_below(fig: Figure, ax, handles_labels=None) -> None:
    handles, labels = handles_labels or ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", fontsize=9, frameon=False)


def curve_figure(runs: list[Run], filename: str, path) -> None:
    """One line per run: training loss (train windows) or test accuracy (eval lines)."""
    attr, x_kind, title = CURVES[filename]
    fig = _new_figure()
    ax = fig.add_subplot()
    plotted = 0
    for i, run in enumerate(runs):
        series = getattr(run, attr)
        xs = series.time_s if x_kind == "time" else series.examples
        points = [(x, y) for x, y in zip(xs, series.value) if _finite(x) and _finite(y)]
        if not points:
            continue
        plotted += 1
        x, y = zip(*points)
        label = run.label + (f": final {y[-1]:.1%}" if attr == "test_accuracy" else "")
        ax.plot(x, y, color=color(i), marker="o", markersize=3.5, linewidth=1.6, label=label)
        if attr == "test_accuracy":  # the last eval line is the final evaluation
            ax.plot(
                x[-1],
                y[-1],
                color=color(i),
                marker="*",
                markersize=13,
                linestyle="none",
                markeredgecolor="black",
                markeredgewidth=0.6,
            )
        if x_kind == "time":
            for restart in run.restarts:
                ax.axvline(restart, color=color(i), linestyle=":", linewidth=1)
    if attr == "train_loss":
        ax.set_ylabel("training loss (cross-entropy, log scale)")
        if plotted:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.3, not 3 x 10^-1
            low, high = ax.get_ylim()
            keep = (2, 3, 5) if math.log10(high / low) < 1.5 else (2, 5)  # minor labels that fit
            ax.yaxis.set_minor_formatter(
                FuncFormatter(
                    lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v) + 1e-9)) in keep else ""
                )
            )
    else:
        ax.set_ylabel("test accuracy")
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))
    if x_kind == "time":
        ax.set_xlabel("wall time since the run started (s)")
    else:
        ax.set_xlabel("training examples processed, all replicas")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlim(left=0)
    ax.grid(True, which="major", alpha=0.3)
    notes = ["train loss: mean over each ~1 s window of the lead replica"] if attr == "train_loss" else []
    if attr == "test_accuracy":
        notes.append("star: final evaluation")
    if any(run.restarts for run in runs) and x_kind == "time":
        notes.append("dotted: resumed")
    if any(run.examples_scale > 1.0001 for run in runs) and x_kind == "examples":
        notes.append("Downpour: the lead replica's count scaled to all replicas")
    ax.set_title("\n".join([title] + notes), fontsize=11)
    if not plotted:
        ax.text(0.5, 0.5, "no data in metrics.jsonl", transform=ax.transAxes, ha="center", va="center", color="gray")
    _legend_below(fig, ax)
    _save(fig, path)


def examples_per_s_figure(runs: list[Run], path) -> None:
    """Grouped bars: each replica's examples/s, one group per run (single-replica SGD: one bar)."""
    fig = _new_figure()
    ax = fig.add_subplot()
    width = 0.8
    ticks, tick_labels, tops = [], [], []
    for i, run in enumerate(runs):
        s = run.summary
        rates = [rate or 0.0 for rate in s.get("replica_examples_per_s") or []]  # None: a replica that left
        if not rates and s.get("examples_per_s") is not None:
            rates = [s["examples_per_s"]]
        total = s.get("examples_per_s")
        n = max(len(rates), 1)
        bar_w = width / n
        xs = [i - width / 2 + bar_w * (k + 0.5) for k in range(len(rates))]
        if rates:
            ax.bar(xs, rates, width=bar_w * 0.9, color=color(i), edgecolor="black", linewidth=0.5)
            if len(rates) > 1:
                for k, (x, rate) in enumerate(zip(xs, rates)):
                    ax.text(x, rate, f"r{k}", ha="center", va="bottom", fontsize=7)
            tops.append(max(rates))
        ticks.append(i)
        total_text = f"total {total:,.0f} ex/s" if total is not None else "no summary.json"
        tick_labels.append(f"{run.name}\n{_algo(run)}\n{total_text}")
    ax.set_xticks(ticks, tick_labels, fontsize=8)
    ax.set_xlim(-0.6, len(runs) - 0.4)
    ax.set_ylabel("examples per second, per replica")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    if tops:
        ax.set_ylim(0, max(tops) * 1.12)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title("Training throughput per replica (bars: replicas r0, r1, ...; total under each run)", fontsize=11)
    _save(fig, path)


def staleness_figure(runs: list[Run], path) -> None:
    """One histogram panel per run that has a staleness histogram (Downpour); each run keeps
    its colour from the other figures."""
    panels = [(i, run) for i, run in enumerate(runs) if run.summary.get("staleness_hist")]
    fig = _new_figure(figsize=(FIGSIZE[0], max(2.8 * len(panels), 3.4)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (i, run) in zip(axes, panels):
        hist = list(run.summary["staleness_hist"])
        last = max((k for k, c in enumerate(hist) if c), default=0)
        shown = hist[: max(last + 2, 6)]
        xs = list(range(len(shown)))
        ax.bar(xs, shown, width=0.85, color=color(i), edgecolor="black", linewidth=0.4)
        every = max(1, math.ceil(len(xs) / 25))
        ticks = [k for k in xs if k % every == 0 or k == xs[-1]]
        labels = [str(k) for k in ticks]
        if len(shown) == len(hist):  # the last bucket counts everything at or above its index
            labels[-1] = f">={len(hist) - 1}"
        ax.set_xticks(ticks, labels, fontsize=8)
        ax.set_xlim(-0.6, len(xs) - 0.4)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.7)
        ax.set_ylabel("pushes (log scale)")
        ax.grid(True, axis="y", alpha=0.3)
        s = run.summary
        ax.set_title(
            f"{run.label}: mean {s.get('staleness_mean', math.nan):.2f}, max {s.get('staleness_max', '?')}, "
            f"{sum(hist):,} pushes applied",
            fontsize=10,
        )
    axes[-1].set_xlabel("staleness (shard versions between a replica's fetch and the apply of its push)")
    fig.suptitle("Staleness of applied pushes (Downpour)", fontsize=11)
    _save(fig, path)


def _algo(run: Run) -> str:
    algo = run.algorithm + (f"/{run.server_rule}" if run.server_rule else "")
    if run.algorithm == "downpour":
        return f"{algo}, {run.n_shards}x{run.n_replicas}"
    return algo


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
