"""PURE: when a run stops (steps, epochs or seconds, whichever comes first) and how far along it is."""

from dataclasses import dataclass

from ..config import Run


@dataclass
class RunClock:
    """Counters a training loop advances; compared against the run limits."""

    steps: int = 0
    epochs: float = 0.0
    seconds: float = 0.0


def fraction_done(limits: Run, clock: RunClock) -> float:
    """The largest fraction of any set limit reached so far, in [0, 1]."""
    fractions = [0.0]
    if limits.steps:
        fractions.append(clock.steps / limits.steps)
    if limits.epochs:
        fractions.append(clock.epochs / limits.epochs)
    if limits.seconds:
        fractions.append(clock.seconds / limits.seconds)
    return min(1.0, max(fractions))


def limit_reached(limits: Run, clock: RunClock) -> str | None:
    """The name of the first limit reached ('steps', 'epochs', 'seconds') or None."""
    if limits.steps and clock.steps >= limits.steps:
        return "steps"
    if limits.epochs and clock.epochs >= limits.epochs:
        return "epochs"
    if limits.seconds and clock.seconds >= limits.seconds:
        return "seconds"
    return None
