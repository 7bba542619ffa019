"""The job API's answers to what a job may and may not ask."""

from __future__ import annotations

import pytest

from conveyor.agent.jobapi import JobApiError, JobState, perform


def test_set_unset_get_and_sync() -> None:
    state = JobState({"A": "1", "B": "2"})
    perform(state, {"op": "env.set", "env": {"C": "3", "A": "one"}})
    perform(state, {"op": "env.unset", "names": ["B", "NEVER_SET"]})
    assert perform(state, {"op": "env.get"}) == {"A": "one", "C": "3"}
    perform(state, {"op": "env.sync", "env": {"Z": "z"}})
    assert perform(state, {"op": "env.get"}) == {"Z": "z"}


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"op": "env.set", "env": {"CONVEYOR_AGENT_ACCESS_TOKEN": "x"}}, "cannot be changed"),
        ({"op": "env.unset", "names": ["BUILDKITE_AGENT_ENDPOINT"]}, "cannot be changed"),
        ({"op": "env.set", "env": {"A=B": "x"}}, "is not a variable name"),
        ({"op": "env.set", "env": {"A": 1}}, "'env' must be an object"),
        ({"op": "env.unset", "names": "A"}, "'names' must be a list"),
        ({"op": "redact", "value": ""}, "'value' must be a non-empty string"),
        ({"op": "env.set", "env": {"OK": "1", "CONVEYOR_JOB_ID": "x"}}, "cannot be changed"),
        ({"op": "redact", "value": "x" * (64 * 1024 + 1)}, "at most 64 KiB"),
        ({"op": "redact", "value": "long-enough"}, "not being read any more"),
    ],
)
def test_refusals_name_the_problem(request_: dict[str, object], message: str) -> None:
    state = JobState({"A": "1"})
    with pytest.raises(JobApiError, match=message):
        perform(state, request_)
    assert state.env == {"A": "1"}  # nothing half-applied


def test_redact_reports_whether_the_value_was_taken() -> None:
    taken: list[str] = []

    def redact(value: str) -> bool:
        taken.append(value)
        return len(value) >= 6

    state = JobState({}, redact)
    assert perform(state, {"op": "redact", "value": "a-long-secret"}) is True
    assert perform(state, {"op": "redact", "value": "abc"}) is False
    assert taken == ["a-long-secret", "abc"]


def test_sync_redacts_new_secret_values_only() -> None:
    taken: list[str] = []

    def redact(value: str) -> bool:
        taken.append(value)
        return True

    state = JobState({"OLD_TOKEN": "already-known"}, redact)
    env = {"OLD_TOKEN": "already-known", "NEW_PASSWORD": "hunter2-long", "PLAIN": "not-secret"}
    perform(state, {"op": "env.sync", "env": env})
    assert taken == ["hunter2-long"]
