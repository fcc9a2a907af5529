"""The extension's unit tests (URL normalisation, verdict → view, error → words, the gateway client, the cache
rules, every string in both locales) run by node's test runner; this test runs them so `make test` counts them."""

from __future__ import annotations

import re
import shutil
import subprocess

from tests.conftest import ROOT

EXTENSION = ROOT / "extension"


def test_node_unit_tests_pass():
    node = shutil.which("node")
    assert node, "node is missing (make setup installs Debian's nodejs)"
    run = subprocess.run(
        [node, "--test", "--test-reporter=tap", "test/"], cwd=EXTENSION, capture_output=True, text=True, timeout=120
    )
    counts = {k: int(v) for k, v in re.findall(r"^# (tests|pass|fail|cancelled) (\d+)$", run.stdout, re.M)}
    assert run.returncode == 0 and counts.get("fail") == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert counts.get("tests", 0) >= 30 and counts["pass"] == counts["tests"], counts
