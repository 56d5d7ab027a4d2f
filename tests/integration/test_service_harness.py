"""The harness never lets a missing or dead service pass for a skipped test under CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

USES_PROMETHEUS = """
def test_scrape(prometheus_instance):
    assert prometheus_instance.url
"""

KILLS_PROMETHEUS_MID_SUITE = """
import os, signal

def test_first_kills_it(prometheus_instance):
    os.killpg(prometheus_instance.process.process.pid, signal.SIGKILL)
    prometheus_instance.process.process.wait()

def test_second_needs_it(prometheus_instance):
    assert prometheus_instance.url
"""


def run_inner(
    pytester: pytest.Pytester, source: str, ci: str, path_prefix: Path | None = None
) -> pytest.RunResult:
    pytester.makepyfile(source)
    path = os.environ["PATH"] if path_prefix is None else f"{path_prefix}:{os.environ['PATH']}"
    pytester._monkeypatch.setenv("CI", ci)
    pytester._monkeypatch.setenv("PATH", path)
    pytester._monkeypatch.setenv("PYTHONPATH", str(REPO))
    return pytester.runpytest_subprocess(
        "-p", "tests.services.plugin", "-p", "no:cacheprovider", "-rA"
    )


@pytest.fixture
def broken_prometheus(tmp_path: Path) -> Path:
    """A directory whose `prometheus` fails at once, as a broken install would."""
    directory = tmp_path / "broken-bin"
    directory.mkdir()
    script = directory / "prometheus"
    script.write_text("#!/bin/sh\necho 'cannot open storage: read-only file system' >&2\nexit 3\n")
    script.chmod(0o755)
    return directory


def test_service_that_cannot_start_fails_the_run_in_ci(
    pytester: pytest.Pytester, broken_prometheus: Path
) -> None:
    """Under CI=true, a service that exits at start fails the test, naming it and the reason."""
    result = run_inner(pytester, USES_PROMETHEUS, ci="true", path_prefix=broken_prometheus)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*Prometheus is unavailable: exited with code 3*"])
    result.stdout.fnmatch_lines(["*cannot open storage*"])


def test_service_that_cannot_start_is_a_skip_outside_ci(
    pytester: pytest.Pytester, broken_prometheus: Path
) -> None:
    """On a developer machine, the same failure skips and says which install step is missing."""
    result = run_inner(pytester, USES_PROMETHEUS, ci="", path_prefix=broken_prometheus)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*Prometheus is unavailable*tools/install-services.sh*"])


def test_service_stopped_mid_suite_fails_the_next_test(pytester: pytest.Pytester) -> None:
    """A real Prometheus killed during the session fails the next test that needs it, by name."""
    result = run_inner(pytester, KILLS_PROMETHEUS_MID_SUITE, ci="true")
    result.stdout.fnmatch_lines(["*Prometheus stopped during the test session (exit code -9)*"])
    outcomes = result.parseoutcomes()
    assert outcomes.get("skipped", 0) == 0
    assert outcomes.get("errors", 0) + outcomes.get("failed", 0) >= 1
