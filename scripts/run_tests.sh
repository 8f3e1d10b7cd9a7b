#!/usr/bin/env bash
# Quickstart 2: install (first time), run the static checks (scripts/check.sh), then the whole
# test suite (unit, MPI, fault, Slurm, bench smoke). Extra arguments go to pytest, e.g. -k layout
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash scripts/check.sh
exec python -m pytest tests -q "$@"
