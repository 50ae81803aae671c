"""The CI plugin (tests/ci_skips.py): a skip fails under CI=true, and nothing else changes."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TESTS = """
import pytest

def test_passes():
    assert True

def test_skips():
    pytest.skip("an optional tool is missing")

@pytest.mark.skipif(True, reason="data absent")
def test_skipif():
    pass

@pytest.mark.xfail(strict=True, reason="a known bug")
def test_xfails():
    assert False
"""


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_skip_fails_only_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest("pytest_plugins = ['ci_skips']")
    pytester.makepyfile(test_sample=TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    if ci:
        # a skip in the call phase reads as a failure, one in setup (skipif) as an error: both fail the run
        result.assert_outcomes(passed=1, failed=1, errors=1, xfailed=1)
        assert result.ret != 0
        result.stdout.fnmatch_lines(["*skipped under CI=true*an optional tool is missing*"])
    else:  # the negative control: on a developer's machine the same file skips
        result.assert_outcomes(passed=1, skipped=2, xfailed=1)
        assert result.ret == 0
