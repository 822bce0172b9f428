"""The ``slow`` marker (``helpers.markers``): derived from fixtures, and guarded."""

from __future__ import annotations

import pytest

# Its cases start processes, as the guard is there to notice (and it runs pytest inside pytest).
pytestmark = pytest.mark.slow

CASES = """
import subprocess
import sys

import pytest

from helpers.markers import starts_processes


def run_a_process() -> None:
    subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.fixture
@starts_processes
def server() -> None:
    run_a_process()


def test_unmarked_starts_a_process() -> None:
    run_a_process()


@pytest.mark.slow
def test_marked_starts_a_process() -> None:
    run_a_process()


def test_through_a_declared_fixture(server: None) -> None:
    pass


def test_no_process() -> None:
    import platform

    platform.processor()  # a lookup that may run uname: not the test's process
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(
        "[pytest]\nmarkers =\n    slow: slow\naddopts = -p no:cacheprovider -p no:lakeferry\n"
    )
    pytester.makeconftest('pytest_plugins = ["helpers.markers"]\n')
    pytester.makepyfile(test_cases=CASES)
    return pytester


def test_an_unmarked_test_that_starts_a_process_fails_naming_it(suite: pytest.Pytester) -> None:
    result = suite.runpytest_inprocess()
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_unmarked_starts_a_process started a process but is not marked slow*",
            "*subprocess.Popen*-c pass*",
        ]
    )


def test_tests_using_a_declared_fixture_are_slow(suite: pytest.Pytester) -> None:
    result = suite.runpytest_inprocess("-m", "not slow", "-v")
    result.assert_outcomes(passed=2, errors=1, deselected=2)  # the unmarked one: passed, then error
    result.stdout.no_fnmatch_line("*test_through_a_declared_fixture*")
