"""PURE: report.md, a table with one row per run and links to the figures."""

import math

from .load import Run

COLUMNS = [
    "run",
    "algorithm",
    "rule",
    "shards x replicas",
    "steps",
    "wall s",
    "examples/s",
    "final train loss",
    "test accuracy",
    "pushes applied / rejected",
    "staleness mean / max",
]


def run_row(run: Run) -> list[str]:
    s = run.summary
    downpour = run.algorithm == "downpour"
    shards = run.n_shards if run.n_shards is not None else 0
    pushes = f"{_int(s.get('pushes_applied'))} / {_int(s.get('pushes_rejected'))}" if downpour else "-"
    staleness = f"{_num(s.get('staleness_mean'), '.2f')} / {_int(s.get('staleness_max'))}" if downpour else "-"
    return [
        f"`{run.name}`",
        run.algorithm,
        run.server_rule or "-",
        f"{shards} x {run.n_replicas or 1}",
        _int(s.get("steps")),
        _wall(run),
        _num(s.get("examples_per_s"), ",.0f"),
        _num(s.get("final_train_loss"), ".4f"),
        _pct(s.get("test_accuracy")),
        pushes,
        staleness,
    ]


def render(runs: list[Run], figures: list[str], generated: str, skipped: dict[str, str]) -> str:
    """figures: PNG file names written next to report.md; skipped: file name -> why not."""
    lines = [
        "# Training report",
        "",
        f"Generated {generated} from {len(runs)} run(s).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in run_row(run)) + " |" for run in runs]
    lines += [
        "",
        "Steps count every replica's steps. Wall s and examples/s are the last invocation's (a resumed "
        "run: since the resume). Test accuracy is the final evaluation on the whole test split.",
        "",
    ]
    lines += ["## Runs", ""]
    for run in runs:
        extra = "".join(f"; {note}" for note in run.notes)
        lines.append(f"- `{run.name}`: `{run.path}`{extra}")
    lines += ["", "## Figures", ""]
    for name in figures:
        lines.append(f"- [{name}]({name})")
    for name, why in skipped.items():
        lines.append(f"- {name}: not drawn ({why})")
    lines += [""]
    for name in figures:
        lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)


def _wall(run: Run) -> str:
    """summary.wall_s is the last invocation's; a resumed run adds its whole span from metrics."""
    text = _num(run.summary.get("wall_s"), ".1f")
    times = run.train_loss.time_s + run.test_accuracy.time_s
    if run.restarts and times:
        text += f" (all {len(run.restarts) + 1} invocations: {max(times):.1f})"
    return text


def _num(value, fmt: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return format(value, fmt)


def _int(value) -> str:
    return _num(value, "d") if isinstance(value, int) else _num(value, ".0f")


def _pct(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return f"{value:.2%}"
