"""A dataset file HDF5 cannot lock is reported as a lock failure, naming the file and the setting.

The conflict is real: another process holds the file open for writing (h5py locks it), as a
writer on a shared file system would.
"""

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_tools.cli import main as data_tools_main
from distbelief_mpi.cli import main as distbelief_main
from distbelief_mpi.data.hdf5 import read_info, write_dataset
from distbelief_mpi.data.locking import is_lock_failure
from distbelief_mpi.errors import DatasetError

REPO = Path(__file__).resolve().parents[2]
HOLD = "import h5py, sys; f = h5py.File(sys.argv[1], 'a'); print('held', flush=True); sys.stdin.read()"


@pytest.fixture
def locked(tmp_path):
    """A small dataset file held open for writing by another process."""
    path = tmp_path / "held.h5"
    x, y = np.zeros((6, 1, 4, 4), np.uint8), np.arange(6) % 2
    common = dict(name="held", source="test", n_classes=2, input_shape=(1, 4, 4), x_scale=1.0, synthetic=True)
    write_dataset(path, x_train=x, y_train=y, x_test=x, y_test=y, **common)
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "TRUE"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield path
    finally:
        holder.communicate(timeout=30)  # closes its stdin: it closes the file and exits


def lock_locally(monkeypatch):
    monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "TRUE")  # HDF5 reads it at each open


def test_read_info_names_the_lock_and_the_setting(locked, monkeypatch):
    lock_locally(monkeypatch)
    with pytest.raises(DatasetError) as caught:
        read_info(locked)
    message = str(caught.value)
    assert message.startswith(f"{locked}: cannot lock the file for reading (unable to lock file")
    assert "HDF5_USE_FILE_LOCKING=FALSE" in message


def test_commands_exit_2_on_a_lock_failure(locked, tmp_path, monkeypatch, capsys):
    lock_locally(monkeypatch)
    for argv in (["validate", str(locked)], ["inspect", str(locked)]):
        assert data_tools_main(argv) == 2
        assert "cannot lock the file" in capsys.readouterr().err
    assert (
        data_tools_main(
            [
                "from-hdf5",
                str(locked),
                str(tmp_path / "o.h5"),
                "--x",
                "/train/x",
                "--y",
                "/train/y",
                "--test-fraction",
                "0.5",
            ]
        )
        == 2
    )
    assert f"error: {locked}: cannot lock the file" in capsys.readouterr().err
    job = tmp_path / "job.toml"
    job.write_text(f'[data]\npath = "{locked}"\n[run]\nsteps = 1\n')
    assert distbelief_main(["plan", str(job), "-n", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{locked}: cannot lock the file" in err and "HDF5_USE_FILE_LOCKING=FALSE" in err
    assert not (tmp_path / "o.h5").exists()


def test_the_setting_lets_a_reader_in(locked):
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}
    done = subprocess.run(
        [sys.executable, "-m", "data_tools", "validate", str(locked)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert ": ok (" in done.stdout


@pytest.mark.parametrize("code", [errno.EAGAIN, errno.ENOLCK])
def test_lock_errnos_are_recognised(code):
    assert is_lock_failure(OSError(code, "Unable to synchronously open file"))
    assert is_lock_failure(OSError(None, "Unable to open file (unable to lock file, errno = 37)"))
    assert not is_lock_failure(OSError(errno.ENOENT, "Unable to open file (file signature not found)"))


def test_a_lock_refused_while_writing_is_named_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """NFS without lockd refuses every lock (ENOLCK): h5py cannot even create the temp file."""
    import distbelief_mpi.data.writer as writer

    def no_locks(path, mode):
        raise OSError(errno.ENOLCK, "Unable to synchronously create file (unable to lock file, errno = 37)")

    monkeypatch.setattr(writer.h5py, "File", no_locks)
    out = tmp_path / "nfs" / "speech.h5"
    assert data_tools_main(["speech-frames", str(out), "--n", "10"]) == 2
    err = capsys.readouterr().err
    assert f"error: {out}: cannot lock a new file in '{out.parent}'" in err and "HDF5_USE_FILE_LOCKING=FALSE" in err
    assert os.listdir(out.parent) == [] and not writer.PENDING_TEMP_FILES
