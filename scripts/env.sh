# Sourced by the quickstart scripts: create .venv (Python >= 3.11) and install the
# project into it when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $($PYTHON --version)" >&2
    "$PYTHON" -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    echo "installing distbelief-mpi and its dependencies into .venv (first time: a few minutes)" >&2
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch for the export tests: 2.13.0 is a CPU build on this project's machines (30 s, 0.9 GB);
    # a bare `torch` would be PyPI's CUDA build (5.4 GB). Then the export extra finds it installed.
    .venv/bin/python -m pip install --quiet 'torch==2.13.0'
    .venv/bin/python -m pip install --quiet -e '.[test,export]'
    touch .venv/.installed
fi
export PATH="$PWD/.venv/bin:$PATH"
