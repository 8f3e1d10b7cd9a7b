"""`distbelief report`: PNG figures and a markdown summary of one or more run directories.

    distbelief report RUN_DIR [RUN_DIR ...] [--out DIR]

Writes into DIR (default: RUN_DIR/report for a single run; required for several):
loss_vs_time.png, accuracy_vs_time.png, loss_vs_examples.png, accuracy_vs_examples.png,
examples_per_s.png, staleness.png (when some run is Downpour) and report.md.
Needs matplotlib (`pip install 'distbelief-mpi[report]'`). See docs/report.md.
"""

import time
from pathlib import Path

from ..errors import UserInputError
from .load import Run, load_run, name_runs

FIGURES = [
    "loss_vs_time.png",
    "accuracy_vs_time.png",
    "loss_vs_examples.png",
    "accuracy_vs_examples.png",
    "examples_per_s.png",
    "staleness.png",
]

__all__ = ["run_report", "write_report", "load_run", "Run", "FIGURES"]


def run_report(run_dirs: list[str], out: str | None = None) -> int:
    """The CLI command: write the report, print where it went; exit code 0.
    Raises UserInputError on bad input or when matplotlib is missing."""
    if not run_dirs:
        raise UserInputError("report: give at least one RUN_DIR")
    if out is None:
        if len(run_dirs) > 1:
            raise UserInputError(
                f"report: {len(run_dirs)} run directories given; say where the report goes with --out DIR"
            )
        out = Path(run_dirs[0]) / "report"
    out = Path(out)
    written = write_report(run_dirs, out)
    print(f"{out}: report.md and {len(written) - 1} figure(s) for {len(run_dirs)} run(s)")
    return 0


def write_report(run_dirs, out, generated: str | None = None) -> list[Path]:
    """Load every run (all input errors before any figure is drawn), draw the figures and
    write report.md into `out`. Returns the paths written (report.md last)."""
    _require_matplotlib()
    runs = [load_run(path) for path in run_dirs]
    name_runs(runs)
    from . import markdown, plots  # after the check: plots imports matplotlib at module level

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"{out}: cannot create the report directory: {exc.strerror or exc}") from None
    drawn, skipped = [], {}
    for name in FIGURES[:4]:
        plots.curve_figure(runs, name, out / name)
        drawn.append(name)
    if any(run.summary for run in runs):
        plots.examples_per_s_figure(runs, out / "examples_per_s.png")
        drawn.append("examples_per_s.png")
    else:
        skipped["examples_per_s.png"] = "no run has a summary.json"
    if any(run.summary.get("staleness_hist") for run in runs):
        plots.staleness_figure(runs, out / "staleness.png")
        drawn.append("staleness.png")
    else:
        skipped["staleness.png"] = "no run has a staleness histogram: only Downpour runs record one"
    written = [out / name for name in drawn]
    generated = generated or time.strftime("%Y-%m-%d %H:%M:%S %Z")
    (out / "report.md").write_text(markdown.render(runs, drawn, generated, skipped), encoding="utf-8")
    written.append(out / "report.md")
    return written


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserInputError(
            "report needs matplotlib, which is not installed: "
            "pip install 'distbelief-mpi[report]'  (or: pip install matplotlib)"
        ) from None
    # Figures are drawn on Agg canvases directly (report/plots.py), never through pyplot, so no
    # window opens whatever the process's backend is.
