"""`distbelief example`: the job specs shipped with the package (the repository's jobs/*.toml).

A wheel carries them as distbelief_mpi/jobs/*.toml, copied there at build time (setup.py), so
git holds one copy; a source checkout or an editable install reads the repository's jobs/.
"""

import sys
from pathlib import Path

from .errors import UserInputError

PACKAGED = Path(__file__).parent / "jobs"  # in a wheel
SOURCE = Path(__file__).parents[1] / "jobs"  # in a checkout (or an editable install of one)


def jobs_dir() -> Path:
    """The folder the example job specs are read from."""
    return PACKAGED if PACKAGED.is_dir() else SOURCE


def example_names() -> list[str]:
    return sorted(path.stem for path in jobs_dir().glob("*.toml"))


def example_text(name: str) -> str:
    """The job spec NAME (with or without .toml); an unknown name is a UserInputError."""
    stem = name.removesuffix(".toml")
    path = jobs_dir() / f"{stem}.toml"
    if stem not in example_names():
        raise UserInputError(f"no example job named {name!r}; the examples: {', '.join(example_names())}")
    return path.read_text()


def summary_line(text: str) -> str:
    """The spec's first comment line, the description `distbelief example` lists."""
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def run_example(name: str | None, write: str | None) -> int:
    """No name: list the examples. A name: print its spec, or write it to `write` (never over a file)."""
    if name is None:
        if write:
            raise UserInputError("--write needs an example NAME: distbelief example NAME --write PATH")
        names = example_names()
        width = max(map(len, names), default=0)
        for stem in names:
            print(f"{stem:<{width}}  {summary_line(example_text(stem))}")
        return 0
    text = example_text(name)
    if write is None:
        sys.stdout.write(text)
        return 0
    target = Path(write)
    if target.exists():
        raise UserInputError(f"{target}: exists already; remove it or name another path for --write")
    if not target.parent.is_dir():
        raise UserInputError(f"{target}: folder {target.parent} does not exist")
    target.write_text(text)
    print(f"wrote {target}", file=sys.stderr)
    return 0
