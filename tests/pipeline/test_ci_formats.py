"""The gate's result for CI systems (edgebn.pipeline.ci_formats): JUnit XML, GitHub's summary."""

import xml.etree.ElementTree as ET

from edgebn.pipeline.check import CheckResult, Metric
from edgebn.pipeline.ci_formats import append_step_summary, markdown_summary, write_junit

RESULT = CheckResult("new/report.json", "base/report.json", (
    Metric("accuracy", 0.98, 0.97, "drop <= 0.01", True),
    Metric("size_bytes", 1000, 1100, "growth <= 5% | ops", False)))


def test_junit_has_one_case_per_metric_and_a_failure_for_each_regression(tmp_path):
    path = write_junit(RESULT, tmp_path / "gate.xml")
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert (root.get("tests"), root.get("failures")) == ("2", "1")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["accuracy", "size_bytes"]
    assert cases[0].find("failure") is None
    assert cases[1].find("failure").get("message") == ("size_bytes: baseline 1000, current 1100; "
                                                       "limit: growth <= 5% | ops")
    assert suite.find("properties/property").get("value") == "base/report.json"


def test_the_step_summary_is_appended_when_github_asks_for_it(tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert append_step_summary(RESULT) is None
    summary = tmp_path / "summary.md"
    summary.write_text("earlier steps\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert append_step_summary(RESULT) == summary
    text = summary.read_text()
    assert text.startswith("earlier steps\n### edgebn check: **regression**")
    assert "| size_bytes | 1000 | 1100 | growth <= 5% \\| ops | FAIL |" in text
    assert markdown_summary(CheckResult("a", "b", RESULT.metrics[:1])).startswith(
        "### edgebn check: no regression")
