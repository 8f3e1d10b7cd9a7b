"""PURE: `[model] plugins = ["pkg.module", ...]`: import user modules that register layer types.

config.py imports them while it reads the job spec, before `[model] layers` (which may name their
types), so every rank that loads the spec (each one does, before it builds its model) has them.
A module is imported once per process, however often a spec names it. Modules are found on
sys.path and then in the working directory (as `python -m` would: the `distbelief` script does
not put it on sys.path), so a my_layers.py beside where the job is launched needs no PYTHONPATH.
"""

import importlib
import os
import sys


def load_plugins(names: object, key: str = "model.plugins") -> tuple[tuple[str, ...], list[str]]:
    """Import each module named; return (the names, problems naming `key` and the module)."""
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        return (), [f'{key}: expected a list of module names, e.g. ["my_layers"], got {names!r}']
    problems = []
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # last: an installed module of the same name wins
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a user's module may fail any way: report it, name and all
            problems.append(f"{key}: cannot import {name!r}: {type(exc).__name__}: {exc}")
    return tuple(names), problems
