"""Output files written whole or not at all: a temporary file beside the target, renamed."""

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..runtime.files import atomic_output


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator:
    """A binary file object; on success it replaces `path` (runtime/files.atomic_output: fsynced,
    renamed), on failure it is removed."""
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        yield handle


def write_text(path: Path, text: str) -> None:
    with atomic_file(path) as handle:
        handle.write(text.encode())
