"""`python -m bench all --only X` replaces X's section in an existing report and keeps the rest."""

import pytest

from bench.__main__ import MARKER, assemble, merged, split_report

ORDER = ["compute", "scaling", "cost_model"]


def test_only_replaces_the_named_sections_and_keeps_the_others(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    report.write_text(
        assemble(
            "# Benchmarks\n\n- date: then\n",
            {"compute": "## Compute\nold compute\n", "scaling": "## Scaling\nold scaling\n"},
            ORDER,
        )
    )
    for _ in range(2):  # re-running a section replaces its `updated` line too
        report.write_text(
            merged(
                report,
                "# Benchmarks\n\n- date: now\n",
                {"scaling": "## Scaling\nnew scaling\n"},
                ORDER,
                "python -m bench all",
            )
        )
    text = report.read_text()
    header, sections = split_report(text)
    assert "- date: then" in header and header.count("- updated: scaling on ") == 1
    assert "(`python -m bench all --only scaling`)" in header
    assert list(sections) == ["compute", "scaling"]
    assert "old compute" in sections["compute"] and "new scaling" in sections["scaling"]
    assert "old scaling" not in text and text.count(MARKER.format("scaling")) == 1


def test_without_an_earlier_report_only_writes_a_fresh_one(tmp_path):
    text = merged(tmp_path / "none.md", "# Benchmarks\n", {"cost_model": "## Cost model\nx\n"}, ORDER, "c")
    header, sections = split_report(text)
    assert header.startswith("# Benchmarks") and "updated" not in header and list(sections) == ["cost_model"]


def test_only_refuses_to_overwrite_a_report_without_markers(tmp_path):
    report = tmp_path / "old.md"
    report.write_text("# Benchmarks\n\n## Compute\nprecious\n")
    with pytest.raises(ValueError, match="no section markers"):
        merged(report, "# Benchmarks\n", {"compute": "## Compute\nnew\n"}, ORDER, "c")
    assert "precious" in report.read_text()
