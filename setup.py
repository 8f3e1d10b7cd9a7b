"""Build hook: copy the repository's jobs/*.toml into the wheel as distbelief_mpi/jobs/, the
job specs `distbelief example` prints, so git keeps a single copy under jobs/. The rest of
the build is pyproject.toml's."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

JOBS = Path(__file__).parent / "jobs"


class BuildPyWithJobs(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "distbelief_mpi" / "jobs"
        self.mkpath(str(target))
        for spec in sorted(JOBS.glob("*.toml")):
            self.copy_file(str(spec), str(target / spec.name))


setup(cmdclass={"build_py": BuildPyWithJobs})
