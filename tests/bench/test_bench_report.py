"""`python -m bench all --only X` replaces X's section in an existing report and keeps the rest."""

from bench.__main__ import MARKER, assemble, merged, split_report

ORDER = ["compute", "scaling", "cost_model"]


def test_only_replaces_the_named_sections_and_keeps_the_others(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    report.write_text(assemble("# Benchmarks\n\n- date: then\n", {"compute": "## Compute\nold compute\n",
                                                                   "scaling": "## Scaling\nold scaling\n"}, ORDER))
    text = merged(report, "# Benchmarks\n\n- date: now\n", {"scaling": "## Scaling\nnew scaling\n"}, ORDER)
    header, sections = split_report(text)
    assert "- date: then" in header and "- updated " in header and "--only scaling" in header
    assert list(sections) == ["compute", "scaling"]
    assert "old compute" in sections["compute"] and "new scaling" in sections["scaling"]
    assert "old scaling" not in text and text.count(MARKER.format("scaling")) == 1


def test_without_an_earlier_report_only_writes_a_fresh_one(tmp_path):
    text = merged(tmp_path / "none.md", "# Benchmarks\n", {"cost_model": "## Cost model\nx\n"}, ORDER)
    header, sections = split_report(text)
    assert header.startswith("# Benchmarks") and "updated" not in header and list(sections) == ["cost_model"]
