#!/usr/bin/env bash
# Quickstart 1: install (first time), build the digits dataset, train the default job:
# Downpour SGD with 2 parameter shards and 3 asynchronous replicas (5 MPI ranks).
# Extra arguments go to `distbelief train`, e.g. --set run.epochs=5
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
[ -f data/digits.h5 ] || python -m data_tools digits data/digits.h5
exec mpiexec -n 5 distbelief train jobs/digits_downpour.toml "$@"
