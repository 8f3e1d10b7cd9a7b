#!/usr/bin/env bash
# Static checks, as CI runs them before the tests: lint, format, types (pyproject.toml configures each).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ruff check .
ruff format --check .
mypy
