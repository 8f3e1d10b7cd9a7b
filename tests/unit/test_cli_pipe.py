"""`distbelief plan JOB | head`: a reader that stops early is not an error (no traceback)."""

import subprocess
import sys

from tests.mpi.runner import REPO


def test_plan_piped_into_a_reader_that_has_left_ends_quietly():
    # `true` exits at once, long before plan (0.5 s of imports) writes: every write finds the pipe closed
    command = f"{sys.executable} -m distbelief_mpi plan jobs/digits_downpour.toml -n 5 | true"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, cwd=REPO)
    assert done.stderr == "" and done.returncode == 0, done.stderr
