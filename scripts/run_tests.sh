#!/usr/bin/env bash
# Quickstart 2: install (first time) and run the whole test suite (unit + MPI).
# Extra arguments go to pytest, e.g. -k layout
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m pytest tests -q "$@"
