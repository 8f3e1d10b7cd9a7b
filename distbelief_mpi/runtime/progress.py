"""The progress line the lead rank prints while training: step, rate, loss, accuracy, ETA.

One line each in a log (`grep '^progress '` finds them all), rewritten in place on a terminal:
    progress step 1200 epoch 3.20 ex/s 15,432 loss 0.0823 acc 0.9731 test_acc 0.9610 | 45.0% elapsed 0:12 eta 0:15
"""

import os
import sys
import time

# Set inside batch jobs (also salloc): there progress lines come every run.batch_progress_seconds.
BATCH_JOB_VARIABLES = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")
PREFIX = "progress "


def wanted(flag: bool | None, environ=os.environ) -> bool:
    """--progress / --no-progress decide; by default progress shows, in batch jobs too (at their
    own interval, see interval_s). (Under mpiexec no rank's stderr is a terminal, so a TTY test
    would silence every run.)"""
    return True if flag is None else flag


def in_batch_job(environ=os.environ) -> bool:
    return any(environ.get(name) for name in BATCH_JOB_VARIABLES)


def interval_s(run, environ=os.environ) -> float:
    """Seconds between progress lines for a config.Run: progress_seconds interactively,
    batch_progress_seconds inside a batch job (a log read later wants fewer lines)."""
    return run.batch_progress_seconds if in_batch_job(environ) else run.progress_seconds


def progress_for(job, environ=os.environ) -> "Progress":
    """The lead's Progress for a job.Job (interval 0, silent, with --no-progress)."""
    return Progress(interval_s(job.spec.run, environ) if job.progress else 0)


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def figures_text(step_name: str, step: int, epoch: float, rate: float | None, **figures: float | None) -> str:
    """'step 12 epoch 0.50 ex/s 1,234 loss 0.1234 acc 0.9000': a figure that is None or NaN
    (not known yet) is left out rather than printed as 0."""
    parts = [f"{step_name} {step}", f"epoch {epoch:.2f}"]
    if rate is not None and rate == rate:
        parts.append(f"ex/s {rate:,.0f}")
    parts += [f"{name} {value:.4f}" for name, value in figures.items() if value is not None and value == value]
    return " ".join(parts)


class Progress:
    """Prints at most once per `interval` seconds (0: never). `fraction_done` in [0, 1]
    drives the ETA; on a terminal the line is rewritten in place, in a log each is a line.
    The ETA counts from `restart_clock()` (after kernel warm-up), not from construction."""

    def __init__(self, interval: float, stream=None):
        self.interval = interval
        self.stream = stream or sys.stderr
        self.inplace = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.restart_clock()

    def restart_clock(self, fraction_done: float = 0.0) -> None:
        """The ETA's origin: now, with fraction_done of the run already behind (a resumed run)."""
        self.start = self.last = time.perf_counter()
        self.fraction_at_start = fraction_done

    def due(self) -> bool:
        """True when a line should be printed now (callers build the text only then)."""
        return self.interval > 0 and time.perf_counter() - self.last >= self.interval

    def maybe_print(self, text: str, fraction_done: float) -> None:
        if self.due():
            self.last = time.perf_counter()
            self.print(text, fraction_done, self.last)

    def print(self, text: str, fraction_done: float, now: float | None = None) -> None:
        elapsed = (now or time.perf_counter()) - self.start
        eta = self._eta(elapsed, fraction_done)
        line = f"{PREFIX}{text} | {100 * fraction_done:5.1f}% elapsed {format_seconds(elapsed)} eta {eta}"
        end = "" if self.inplace else "\n"
        self.stream.write(("\r" + line if self.inplace else line) + end)
        self.stream.flush()

    def _eta(self, elapsed: float, fraction_done: float) -> str:
        """Remaining time at this invocation's pace; '?' before any of the run is done."""
        done_now = fraction_done - self.fraction_at_start
        if done_now <= 0:
            return "?"
        return format_seconds(elapsed * (1 - fraction_done) / done_now)

    def finish(self) -> None:
        if self.inplace and self.interval > 0:
            self.stream.write("\n")
            self.stream.flush()
