"""Generate docs/job-spec.md from the job spec dataclasses, so the reference cannot drift.

    python -m distbelief_mpi.docgen > docs/job-spec.md

Each key's description is the comment on its line in config.py, continued by comment-only
lines right below it; a unit test checks that the file is up to date and that every key has one.
"""

import dataclasses
import inspect
import re

from . import config
from .model.spec import LAYER_HELP, LAYER_KEYS

FIELD_LINE = re.compile(r"^\s+(\w+): [^=]+= (.+?)\s+# (.*)$")
CONTINUATION = re.compile(r"^\s+# (.*)$")


def field_comments(cls: type) -> dict[str, str]:
    comments: dict[str, str] = {}
    last = None
    for line in inspect.getsource(cls).splitlines():
        match, more = FIELD_LINE.match(line), CONTINUATION.match(line)
        if match:
            last = match.group(1)
            comments[last] = match.group(3)
        elif more and last is not None:
            comments[last] += " " + more.group(1)
        else:
            last = None
    return comments


def section_table(name: str, cls: type) -> list[str]:
    lines = [
        f"## [{name}]",
        "",
        (inspect.getdoc(cls) or "").strip(),
        "",
        "| key | default | meaning |",
        "|---|---|---|",
    ]
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = "(required)" if name == "data" and f.name == "path" else f"`{config._toml_value(default)}`"
        lines.append(f"| `{f.name}` | {shown} | {comments.get(f.name, '')} |")
    return lines + [""]


def layer_table() -> list[str]:
    lines = [
        "### Layer types (`[model] layers = [ { type = ... }, ... ]`)",
        "",
        "| type | keys (default) | what |",
        "|---|---|---|",
    ]
    for kind, keys in LAYER_KEYS.items():
        shown = ", ".join(f"`{k}`" + ("" if d is None else f" ({config._toml_value(d)})") for k, (_, d) in keys.items())
        lines.append(f"| `{kind}` | {shown} | {LAYER_HELP[kind]} |")
    return lines + [""]


def render() -> str:
    lines = [
        "# Job spec reference",
        "",
        "Generated from `distbelief_mpi/config.py` by `python -m distbelief_mpi.docgen`; do not edit by hand.",
        "",
        "A job spec is a TOML file with the sections below. Every key has a default except `data.path`;",
        "unknown keys, wrong types and impossible values are all reported at once (exit code 2).",
        "`--set section.key=value` on the command line overrides any key (the value is TOML; a bare word",
        "is a string). The resolved spec, every key included, is written to `RUN_DIR/job.toml`.",
        "",
    ]
    for name, cls in config.SECTIONS.items():
        lines += section_table(name, cls)
        if name == "model":
            lines += layer_table()
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
