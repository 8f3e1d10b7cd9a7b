"""The progress line the lead rank prints while training: step, rate, loss, ETA."""

import os
import sys
import time

# Set inside batch jobs, whose logs should not fill with progress lines unless asked.
BATCH_JOB_VARIABLES = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")


def wanted(flag: bool | None, environ=os.environ) -> bool:
    """--progress / --no-progress decide; by default progress shows except in batch jobs.
    (Under mpiexec no rank's stderr is a terminal, so a TTY test would silence every run.)"""
    if flag is not None:
        return flag
    return not any(environ.get(name) for name in BATCH_JOB_VARIABLES)


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Prints at most once per `interval` seconds (0: never). `fraction_done` in [0, 1]
    drives the ETA; on a terminal the line is rewritten in place, in a log each is a line."""

    def __init__(self, interval: float, stream=None):
        self.interval = interval
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.last = self.start
        self.inplace = hasattr(self.stream, "isatty") and self.stream.isatty()

    def due(self) -> bool:
        """True when a line should be printed now (callers build the text only then)."""
        return self.interval > 0 and time.perf_counter() - self.last >= self.interval

    def maybe_print(self, text: str, fraction_done: float) -> None:
        if self.due():
            self.last = time.perf_counter()
            self.print(text, fraction_done, self.last)

    def print(self, text: str, fraction_done: float, now: float | None = None) -> None:
        elapsed = (now or time.perf_counter()) - self.start
        eta = elapsed * (1 - fraction_done) / fraction_done if fraction_done > 0 else float("nan")
        eta_text = format_seconds(eta) if eta == eta else "?"
        line = f"{text} | {100 * fraction_done:5.1f}% elapsed {format_seconds(elapsed)} eta {eta_text}"
        end = "" if self.inplace else "\n"
        self.stream.write(("\r" + line if self.inplace else line) + end)
        self.stream.flush()

    def finish(self) -> None:
        if self.inplace and self.interval > 0:
            self.stream.write("\n")
            self.stream.flush()
