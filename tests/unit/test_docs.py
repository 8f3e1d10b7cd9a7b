from pathlib import Path

from distbelief_mpi.docgen import render

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_job_spec_reference_is_generated_from_the_code():
    assert (DOCS / "job-spec.md").read_text() == render(), (
        "docs/job-spec.md is stale: run python -m distbelief_mpi.docgen > docs/job-spec.md"
    )


def test_every_key_has_a_description():
    text = render()
    assert "|  |" not in text, "a job spec key has no comment in config.py"
