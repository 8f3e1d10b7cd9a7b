"""`python -m bench all [--quick]`: every benchmark, one after another, into BENCHMARKS.md + PNG plots.

    python -m bench all                     # the full set (about 20 minutes on 2 cores)
    python -m bench all --quick             # a smoke run of every benchmark (a few minutes; CI runs it)
    python -m bench all --only scaling model_parallel --report BENCHMARKS.md --out-dir bench/results

Each benchmark is its own script in bench/ (run as a subprocess, so each gets a clean MPI and
thread setting); its markdown section, or its plain-text table in a code block, goes into the
report under the exact command that produced it. Plots land in --out-dir, linked from the report.
With --only, the named sections replace theirs in an existing report and the others are kept
(each section starts with a `<!-- bench: NAME -->` marker); the header says which were updated
when, and with what command (--quick included).
"""

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def plan(out: Path, quick: bool, dataset: str) -> list[tuple[str, list[str], str | None]]:
    """(name, script arguments, markdown file it writes or None for plain-text stdout)."""
    q = ["--quick"] if quick else []
    d = ["--dataset", dataset]
    return [
        ("compute", ["compute.py", *q, "--out-dir", str(out)], "compute.md"),
        ("kernels", ["kernels.py", *q], None),
        ("ps_bandwidth", ["ps_bandwidth.py", "--all", *q], None),
        ("ps_latency", ["ps_latency.py", *q, "--out-dir", str(out)], "ps_latency.md"),
        ("scaling", ["scaling.py", *q, *d, "--out-dir", str(out)], "scaling.md"),
        ("model_parallel", ["model_parallel.py", *q, "--out-dir", str(out)], "model_parallel.md"),
        ("stragglers", ["stragglers.py", *q, *d, "--out", str(out / "stragglers.md")], "stragglers.md"),
        ("time_to_accuracy", ["time_to_accuracy.py", *q, *d, "--out-dir", str(out)], "time_to_accuracy.md"),
        ("reshape_resume", ["reshape_resume.py", *q, *d, "--out-dir", str(out)], "reshape_resume.md"),
        (
            "cost_model",
            [
                "cost_model.py",
                *q,
                "--measured",
                str(out / "model_parallel.json"),
                "--scaling",
                str(out / "scaling.json"),
                "--out-dir",
                str(out),
            ],
            "cost_model.md",
        ),
    ]


def header(command: str, quick: bool) -> str:
    from machine import cpu_model, mpi_library_line, usable_cores

    try:
        mpi = mpi_library_line()
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        mpi = f"unknown ({exc})"
    try:
        import torch

        peer = f"PyTorch {torch.__version__} (CPU)"
    except ImportError:
        peer = "PyTorch not installed (its columns are skipped)"
    import numpy

    return "\n".join(
        [
            "# Benchmarks" + (" (quick smoke run: figures not meaningful)" if quick else ""),
            "",
            f"- machine: {cpu_model()}, {usable_cores()} usable cores, {platform.system()} {platform.release()}",
            f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
            f"- software: Python {platform.python_version()}, NumPy {numpy.__version__}, {mpi}; {peer}",
            f"- reproduce: `{command}` (each section gives its own command)",
            "",
        ]
    )


def _relative(arg: str) -> str:
    """Paths inside the repository as the reader would type them (from its top folder)."""
    path = Path(arg)
    return os.path.relpath(path, REPO) if path.is_absolute() and REPO in path.parents else arg


def run_one(name: str, args: list[str], md: str | None, out: Path) -> tuple[str, bool]:
    """(the section's markdown, whether the benchmark ran)."""
    command = [sys.executable, str(REPO / "bench" / args[0]), *args[1:]]
    shown = "python bench/" + " ".join(_relative(a) for a in args)
    print(f"[bench] {name}: {shown}", file=sys.stderr, flush=True)
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    took = f"_{time.monotonic() - start:.0f} s; command: `{shown}`_"
    if done.returncode != 0:
        return (
            f"## {name}\n\n{took}\n\n**failed** (exit {done.returncode}):\n\n```text\n{done.stderr[-3000:]}\n```\n",
            False,
        )
    if md and (out / md).exists():
        return f"{(out / md).read_text().rstrip()}\n\n{took}\n", True
    return f"## {name}\n\n{took}\n\n```text\n{done.stdout.rstrip()}\n```\n", True


MARKER = "<!-- bench: {} -->"


def split_report(text: str) -> tuple[str, dict[str, str]]:
    """(header, {benchmark name: its section}) of a report written by this module."""
    parts = re.split(r"^<!-- bench: (\w+) -->\n", text, flags=re.M)
    return parts[0], dict(zip(parts[1::2], parts[2::2]))


def assemble(header_text: str, sections: dict[str, str], order: list[str]) -> str:
    return (
        header_text.rstrip("\n")
        + "\n\n"
        + "".join(
            MARKER.format(name) + "\n" + sections[name].rstrip("\n") + "\n\n" for name in order if name in sections
        )
    )


def merged(report: Path, header_text: str, new: dict[str, str], order: list[str], command: str) -> str:
    """The report with the sections in `new` replaced (--only), the others kept, and one
    `- updated` line per replaced section in the header (an older line for it is dropped).
    ValueError for an existing report without section markers: it would be lost."""
    if not report.exists():
        return assemble(header_text, new, order)
    old_header, old = split_report(report.read_text())
    if not old:
        raise ValueError(
            f"{report} has no section markers ({MARKER.format('NAME')}); run without --only once, "
            "or name another --report"
        )
    kept = [
        line
        for line in old_header.rstrip("\n").split("\n")
        if not any(line.startswith(f"- updated: {name} ") for name in new)
    ]
    when = datetime.datetime.now().isoformat(timespec="minutes")
    stamps = [f"- updated: {name} on {when} (`{command} --only {' '.join(new)}`)" for name in new]
    return assemble("\n".join(kept + stamps), {**old, **new}, order)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["all"])
    parser.add_argument("--quick", action="store_true", help="smoke run of every benchmark")
    parser.add_argument("--only", nargs="+", help="run only these benchmarks (names as in the report)")
    parser.add_argument(
        "--dataset", default="data/fashion-mnist.h5", help="Fashion-MNIST HDF5 (data_tools fashion-mnist)"
    )
    parser.add_argument("--out-dir", default="bench/results", help="plots and per-benchmark files")
    parser.add_argument("--report", default="BENCHMARKS.md", help="the report to write")
    args = parser.parse_args()
    out, report = Path(args.out_dir).resolve(), Path(args.report).resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench all" + (" --quick" if args.quick else "")
    steps = plan(out, args.quick, args.dataset)
    unknown = sorted(set(args.only or []) - {name for name, _, _ in steps})
    if unknown:
        parser.error(
            f"--only: no benchmark named {', '.join(unknown)} (choose from {', '.join(n for n, _, _ in steps)})"
        )
    sections, failed = {}, []
    for name, script_args, md in steps:
        if args.only and name not in args.only:
            continue
        text, ran = run_one(name, script_args, md, out)
        failed += [] if ran else [name]
        # plots sit in out; the report links them from its own folder
        sections[name] = re.sub(
            r"!\[([^\]]*)\]\(([^)/]+\.png)\)",
            lambda m: f"![{m.group(1)}]({os.path.relpath(out / m.group(2), report.parent)})",
            text,
        )
    order = [name for name, _, _ in steps]
    if args.only:
        try:
            report.write_text(merged(report, header(command, args.quick), sections, order, command))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        report.write_text(assemble(header(command, args.quick), sections, order))
    print(f"[bench] wrote {report}" + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
