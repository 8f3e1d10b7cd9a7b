"""`distbelief example`: the shipped job specs, from a checkout and from a real wheel."""

import shutil
import subprocess
import sys
import zipfile

import pytest

from distbelief_mpi.cli import main
from distbelief_mpi.config import load_job
from distbelief_mpi.examples import example_names, jobs_dir
from tests.mpi.runner import REPO

# What a wheel build reads (setup.py copies jobs/*.toml into the package at build time).
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "distbelief_mpi", "data_tools", "jobs")


def test_every_job_in_jobs_is_an_example_and_a_valid_spec():
    assert jobs_dir().resolve() == (REPO / "jobs").resolve()  # a checkout reads jobs/ itself
    assert example_names() == sorted(path.stem for path in (REPO / "jobs").glob("*.toml"))
    for name in example_names():
        load_job(jobs_dir() / f"{name}.toml")  # raises on a bad key


def test_list_print_and_write(tmp_path, capsys):
    assert main(["example"]) == 0
    assert "digits_downpour " in capsys.readouterr().out
    assert main(["example", "digits_mlp.toml"]) == 0
    assert capsys.readouterr().out == (REPO / "jobs" / "digits_mlp.toml").read_text()
    target = tmp_path / "mine.toml"
    assert main(["example", "digits_mlp", "--write", str(target)]) == 0
    assert target.read_text() == (REPO / "jobs" / "digits_mlp.toml").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["example", "nope"], "no example job named 'nope'; the examples: digits_downpour"),
        (["example", "--write", "x.toml"], "--write needs an example NAME"),
        (["example", "digits_mlp", "--write", "{tmp}/no/such/x.toml"], "does not exist"),
        (["example", "digits_mlp", "--write", "{tmp}/taken.toml"], "exists already"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(args, message, tmp_path, capsys):
    (tmp_path / "taken.toml").write_text("mine")
    assert main([arg.format(tmp=tmp_path) for arg in args]) == 2
    assert message in capsys.readouterr().err
    assert (tmp_path / "taken.toml").read_text() == "mine"


def test_a_wheel_ships_the_jobs_and_prints_them_when_installed(tmp_path):
    """Build a wheel from a copy of the sources, install it (no dependencies: `example` needs
    none) into a fresh venv, and run its `distbelief example` away from any checkout."""
    source = tmp_path / "src"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)], check=True)
    (wheel,) = tmp_path.glob("distbelief_mpi-*.whl")
    shipped = sorted(n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("distbelief_mpi/jobs/"))
    assert shipped == [f"distbelief_mpi/jobs/{name}.toml" for name in example_names()]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", str(wheel)], check=True)
    shown = subprocess.run(
        [venv / "bin" / "distbelief", "example", "digits_downpour"], cwd=tmp_path, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == (REPO / "jobs" / "digits_downpour.toml").read_text()
