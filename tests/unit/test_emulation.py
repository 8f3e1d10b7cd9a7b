"""distbelief_mpi/emulation without namespaces or MPI: the launchers' argv for both MPI flavours,
the checks on names and subnets, and the ssh stand-in, run with a fake `ip` on PATH."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distbelief_mpi.emulation import EmulatedHosts, mpiexec_argv, network_env
from distbelief_mpi.emulation.__main__ import main, parse_ranks
from distbelief_mpi.emulation.launch import mpi_flavour
from tests.mpi.runner import REPO

VERSIONS = {
    "openmpi": "mpirun (Open MPI) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/",
    "mpich": "HYDRA build details:\n    Version:                                 4.2.3",
}


@pytest.fixture
def hosts():
    """Hosts that are never brought up: naming, argv and the stand-in's text need no root."""
    made = EmulatedHosts(3, name="unit1", subnet="10.239.7")
    yield made
    shutil.rmtree(made.workdir, ignore_errors=True)


def fake_mpiexec(tmp_path: Path, flavour: str) -> str:
    path = tmp_path / f"mpiexec-{flavour}"
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{VERSIONS[flavour]}\nEOF\n")
    path.chmod(0o755)
    return str(path)


def option(argv: list[str], flag: str, key: str | None = None) -> str:
    """The value after `flag` (or after `flag key`, for --mca key value)."""
    for i, item in enumerate(argv):
        if item == flag and (key is None or argv[i + 1] == key):
            return argv[i + 2] if key else argv[i + 1]
    raise AssertionError(f"{flag} {key or ''} not in {argv}")


def test_naming_follows_the_name_and_subnet(hosts):
    assert hosts.names == ["h1", "h2", "h3"]
    assert [hosts.namespace(h) for h in hosts.names] == ["unit1-h1", "unit1-h2", "unit1-h3"]
    assert [hosts.address(h) for h in hosts.names] == ["10.239.7.11", "10.239.7.12", "10.239.7.13"]
    assert hosts.bridge == "unit1br" and hosts.bridge_address == "10.239.7.1"
    inner = hosts.command_on("h2", ["echo", "a b"])
    assert inner[:6] == ["ip", "netns", "exec", "unit1-h2", "unshare", "--uts"]
    assert inner[-1] == "hostname h2 && exec echo 'a b'"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_hosts": 0},
        {"n_hosts": 201},
        {"name": "waytoolong"},  # interface names: NAME + v123 must fit Linux's 15 bytes
        {"name": "a-b"},
        {"name": ""},
        {"name": "hé"},
        {"subnet": "10.231"},
        {"subnet": "10.231.0.0"},
        {"subnet": "10.231.256"},
        {"subnet": "10.x.0"},
        {"subnet": "10.231.0/24"},
    ],
)
def test_bad_names_and_subnets_are_refused_before_anything_is_made(kwargs):
    with pytest.raises(ValueError):
        EmulatedHosts(**{"n_hosts": 2, **kwargs})


def test_mpich_argv_starts_one_proxy_per_host_through_the_standin(hosts, tmp_path):
    mpiexec = fake_mpiexec(tmp_path, "mpich")
    assert mpi_flavour(mpiexec) == "mpich"
    argv = mpiexec_argv(hosts, [2, 1, 3], mpiexec)
    assert argv[0] == mpiexec
    assert option(argv, "-launcher") == "ssh" and option(argv, "-launcher-exec") == str(hosts.launcher)
    assert option(argv, "-localhost") == "10.239.7.1"  # proxies connect back over the bridge
    assert option(argv, "-hosts") == "h1:2,h2:1,h3:3" and option(argv, "-n") == "6"
    assert option(argv, "-genv", "UCX_TLS") == "tcp,self" == network_env()["UCX_TLS"]


def test_fewer_hosts_used_than_made_and_bad_counts(hosts, tmp_path):
    mpiexec = fake_mpiexec(tmp_path, "mpich")
    assert option(mpiexec_argv(hosts, [4], mpiexec), "-hosts") == "h1:4"
    for ranks in ([1, 1, 1, 1], [2, 0], [1, -1, 1]):
        with pytest.raises(ValueError):
            mpiexec_argv(hosts, ranks, mpiexec)


def test_open_mpi_argv_keeps_daemons_and_data_on_the_emulated_subnet(hosts, tmp_path):
    mpiexec = fake_mpiexec(tmp_path, "openmpi")
    assert mpi_flavour(mpiexec) == "openmpi"
    argv = mpiexec_argv(hosts, [2, 3], mpiexec)
    assert argv[0] == os.path.realpath(mpiexec) and option(argv, "-n") == "5"
    assert option(argv, "--host") == "h1:2,h2:3"
    assert option(argv, "--mca", "plm_rsh_agent") == str(hosts.launcher)
    assert option(argv, "--mca", "oob_tcp_if_include") == "10.239.7.0/24"  # daemons <-> mpirun
    assert option(argv, "--mca", "pml") == "ob1"  # messages: TCP between hosts, vader within one
    assert option(argv, "--mca", "btl").split(",") == ["tcp", "vader", "self"]
    assert option(argv, "--mca", "btl_tcp_if_include") == "10.239.7.0/24"
    assert option(argv, "--mca", "osc").split(",") == ["ucx", "sm"]  # windows: UCX, kept on TCP
    assert option(argv, "-x", None) == "UCX_TLS=tcp,self"
    assert option(argv, "--mca", "mpi_yield_when_idle") == "1"
    assert option(argv, "--bind-to") == "none"  # each host's daemon would bind to the same cores
    assert {"--allow-run-as-root", "--oversubscribe"} <= set(argv)
    assert "-launcher" not in argv and "-genv" not in argv


def test_open_mpi_is_called_by_its_real_path(hosts, tmp_path):
    """A venv's bin/mpiexec linked to the system's: Open MPI derives the daemons' prefix from
    the path it was called by, and would look for VENV/bin/orted."""
    real = fake_mpiexec(tmp_path, "openmpi")
    (tmp_path / "venv-bin").mkdir()
    (tmp_path / "venv-bin" / "mpiexec").symlink_to(real)
    assert mpiexec_argv(hosts, [1, 1], str(tmp_path / "venv-bin" / "mpiexec"))[0] == real


@pytest.fixture
def standin(hosts, tmp_path):
    """The stand-in script, run with a fake `ip` on PATH that records its argv (NUL separated)."""
    hosts._write_launcher()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ip").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done > "$RECORD"\n')
    (bin_dir / "ip").chmod(0o755)
    record = tmp_path / "ip-argv"

    def run(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        record.unlink(missing_ok=True)
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record)}
        done = subprocess.run([str(hosts.launcher), *args], capture_output=True, text=True, env=env, timeout=30)
        return done, (record.read_text().split("\0")[:-1] if record.exists() else [])

    return run


@pytest.mark.parametrize(
    "args, host",
    [
        (["h1", "orted", "-mca", "ess", "env"], "h1"),  # Open MPI's plm_rsh
        (["-x", "h2", "/venv/bin/hydra_pmi_proxy", "--control-port", "10.239.7.1:4321"], "h2"),  # Hydra
        (["-q", "-T", "-n", "-a", "h3", "orted", "-mca", "ess", "env"], "h3"),
        (["-o", "StrictHostKeyChecking=no", "-p", "22", "-l", "root", "h1", "orted", "-mca", "ess", "env"], "h1"),
        (["root@h2", "orted", "-mca", "ess", "env"], "h2"),
    ],
)
def test_standin_drops_ssh_options_and_runs_the_command_on_the_host(standin, args, host):
    done, argv = standin(*args)
    assert done.returncode == 0, done.stderr
    command = args[args.index(host if host in args else f"root@{host}") + 1 :]
    # ip netns exec NS unshare --uts sh -c SCRIPT "COMMAND": the command joined, as ssh does
    assert argv[:6] == ["netns", "exec", f"unit1-{host}", "unshare", "--uts", "sh"]
    assert argv[6] == "-c" and argv[8] == " ".join(command)
    assert argv[7].startswith(f"hostname {host} && exec sh -c ")


def test_standin_runs_the_joined_command_under_the_hosts_hostname(standin, tmp_path):
    """The script `sh -c` gets: set the hostname (here a fake that records it), then run the
    joined command in a shell, as sshd would, so its quoting and `;` work."""
    _, argv = standin("-x", "h3", "echo", "'a  b';", "echo", "$((1 + 2))")
    fake = tmp_path / "bin" / "hostname"
    fake.write_text(f'#!/bin/sh\necho "$1" > {tmp_path / "hostname-set"}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    done = subprocess.run(argv[5:], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "a  b\n3\n"
    assert (tmp_path / "hostname-set").read_text() == "h3\n"


def test_standin_refuses_a_host_it_does_not_emulate(standin):
    done, argv = standin("-x", "h9", "true")
    assert done.returncode == 255 and "no emulated host h9" in done.stderr and argv == []


@pytest.mark.parametrize(
    "text, ranks", [("2,3", [2, 3]), ("5", [5]), ("2,0", None), ("2,x", None), ("", None), ("-1", None)]
)
def test_ranks_per_host_are_parsed(text, ranks):
    assert parse_ranks(text) == ranks


def test_a_wrong_command_line_is_a_usage_error_before_any_host_is_made(capsys):
    assert main(["run", "--ranks", "2,0", "--", "true"]) == 2
    assert main(["run", "--ranks", "2,3"]) == 2
    assert "usage: run --ranks" in capsys.readouterr().err


def test_the_module_runs_as_a_program():
    done = subprocess.run(
        [sys.executable, "-m", "distbelief_mpi.emulation", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0 and "run" in done.stdout and "down" in done.stdout
