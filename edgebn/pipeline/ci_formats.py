"""The CI gate in CI's own formats: JUnit XML (GitLab, Jenkins, most CI systems read it) and a
Markdown summary for GitHub's step summary (``$GITHUB_STEP_SUMMARY``).

One JUnit test case per metric of ``edgebn check``: a passing metric is a passing case whose
``system-out`` gives the measured value against the limit; a failing one carries a
``<failure>`` whose message says the same. Written atomically.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from edgebn.files import write_atomic
from edgebn.pipeline.check import CheckResult, Metric

SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


def _describe(m: Metric) -> str:
    return f"{m.name}: baseline {m.baseline}, current {m.current}; limit: {m.threshold}"


def junit_xml(result: CheckResult) -> str:
    """The check as a JUnit XML document: one testsuite, one testcase per metric."""
    failures = sum(not m.passed for m in result.metrics)
    suite = ET.Element("testsuite", name="edgebn check", tests=str(len(result.metrics)),
                       failures=str(failures), errors="0", skipped="0")
    ET.SubElement(ET.SubElement(suite, "properties"), "property", name="baseline",
                  value=result.baseline)
    for m in result.metrics:
        case = ET.SubElement(suite, "testcase", classname="edgebn.check", name=m.name)
        if m.passed:
            ET.SubElement(case, "system-out").text = _describe(m)
        else:
            failure = ET.SubElement(case, "failure", message=_describe(m), type="regression")
            failure.text = _describe(m)
    suites = ET.Element("testsuites", name=f"edgebn check {result.report}",
                        tests=str(len(result.metrics)), failures=str(failures))
    suites.append(suite)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(result: CheckResult, path: str | Path) -> Path:
    write_atomic(path, junit_xml(result))
    return Path(path)


def markdown_summary(result: CheckResult) -> str:
    """The check as GitHub's step summary shows it: a verdict line and a table of metrics."""
    verdict = "no regression" if result.passed else "**regression**"
    lines = [f"### edgebn check: {verdict}", "",
             f"`{result.report}` against `{result.baseline}`", "",
             "| metric | baseline | current | limit | result |",
             "| --- | --- | --- | --- | --- |"]
    for m in result.metrics:
        cells = [m.name, m.baseline, m.current, m.threshold, "pass" if m.passed else "FAIL"]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def append_step_summary(result: CheckResult) -> Path | None:
    """Append the summary to ``$GITHUB_STEP_SUMMARY`` when set (GitHub Actions); else None."""
    target = os.environ.get(SUMMARY_ENV)
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as f:
        f.write(markdown_summary(result) + "\n")
    return Path(target)
