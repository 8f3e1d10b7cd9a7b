"""One exception hierarchy. Every message says what is wrong and what to change.

`UserInputError` (and subclasses) mean bad input from the user: a job spec, a dataset
file, a checkpoint, a world size. The CLI prints them without a traceback and exits 2.
Anything else is a bug or an environment failure: the CLI exits 1 (and under MPI the
whole job is aborted, naming the rank and role).
"""


class DistbeliefError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = 1


class UserInputError(DistbeliefError):
    """Bad input from the user; exit code 2, no traceback."""

    exit_code = 2


class ConfigError(UserInputError):
    """A job spec is invalid. Carries every problem found, not just the first."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s) in the job spec:\n{lines}")


class DatasetError(UserInputError):
    """A dataset file is missing, damaged or does not follow the schema."""

    def __init__(self, path, what: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {what}")


class LayoutError(UserInputError):
    """The world size does not fit the job spec's topology."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("layout does not fit:\n" + "\n".join(f"  - {p}" for p in self.problems))


class CheckpointError(UserInputError):
    """A checkpoint is missing, damaged or incompatible with the job."""


class CheckpointWriteError(DistbeliefError):
    """Writing a checkpoint failed (disk full, file-size limit, I/O error). Exit code 1: not bad
    input, but the message says what happened; earlier checkpoints are intact."""


class RankHung(DistbeliefError):
    """A rank has made no progress for faults.watchdog_seconds (it, or a rank that waited on it,
    noticed). Exit code 3, the watchdog's (watchdog.EXIT_HUNG); the message names the rank."""

    exit_code = 3


class RankLost(DistbeliefError):
    """A rank has left the job mid-run and the job cannot, or was told not to, go on without it."""
