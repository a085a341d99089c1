"""The backend-coverage verdict: every single attempt counts, every backend must answer."""

from __future__ import annotations

import itertools

import pytest

from fixtures.probes import Outcome, ProbeKind, ProbeResult
from fixtures.verdicts import BackendCoverage, assert_every_backend_answers, probe_every_backend


def answer(body: str | None, outcome: Outcome = Outcome.REACHABLE, attempts: int = 1):
    return ProbeResult(
        ProbeKind.HTTP, "203.0.113.10", 8080, "client", outcome, body=body, attempts=attempts
    )


def run(answers, expected=("a", "b")) -> BackendCoverage:
    it = iter(answers)
    return probe_every_backend(lambda: next(it), "203.0.113.10", expected, len(answers))


def test_passes_when_every_attempt_answers_and_every_backend_is_seen():
    assert_every_backend_answers(run([answer("a"), answer("b"), answer("a")]))


def test_one_failed_attempt_fails_even_when_the_others_reached_every_backend():
    coverage = run([answer("a"), answer(None, Outcome.FILTERED), answer("b")])
    with pytest.raises(AssertionError, match="1 failed") as err:
        assert_every_backend_answers(coverage)
    assert "a retrying probe would have hidden" in str(err.value)


def test_success_only_on_a_retry_counts_as_a_failure():
    with pytest.raises(AssertionError, match="1 failed"):
        assert_every_backend_answers(run([answer("a"), answer("b", attempts=2)]))


def test_a_backend_that_never_answers_is_named():
    with pytest.raises(AssertionError, match=r"never answered: \['b'\]"):
        assert_every_backend_answers(run([answer("a")] * 4))


def test_attempts_are_bounded_and_must_be_positive():
    calls = itertools.count()
    probe_every_backend(lambda: answer(str(next(calls))), "x", {"0"}, 5)
    assert next(calls) == 5
    with pytest.raises(ValueError):
        probe_every_backend(lambda: answer("a"), "x", {"a"}, 0)
