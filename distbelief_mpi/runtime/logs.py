"""Logging: every line tagged with rank and role; one file per rank in the run directory."""

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s [rank {rank} {role}] %(levelname)s %(name)s: %(message)s"


def setup_logging(world_rank: int, role_label: str, log_dir: Path | None, verbose: bool = False) -> None:
    fmt = logging.Formatter(FORMAT.format(rank=world_rank, role=role_label))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    console.setFormatter(fmt)
    root.addHandler(console)
    if log_dir is not None:
        file_handler = logging.FileHandler(Path(log_dir) / f"rank-{world_rank}.log")
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)
