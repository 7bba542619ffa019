"""The shared part of the commands run inside a job: finding the job, and failing clearly."""

from __future__ import annotations

import httpx
import pytest

from conveyor.cli.injob import job_context, run_in_job
from conveyor.errors import ConveyorError, JobGoneError

JOB_ENV = {
    "BUILDKITE_AGENT_ENDPOINT": "http://127.0.0.1:9",
    "CONVEYOR_AGENT_ACCESS_TOKEN": "cvj_x",
    "CONVEYOR_JOB_ID": "j1",
}


def test_the_job_is_found_by_either_name() -> None:
    assert job_context(JOB_ENV, "conveyor x") == ("http://127.0.0.1:9", "cvj_x", "j1")
    with pytest.raises(ConveyorError, match=r"`conveyor x` works only inside a job: "
                       r"CONVEYOR_JOB_ID is not set .*\. Try this"):  # fmt: skip
        job_context({**JOB_ENV, "CONVEYOR_JOB_ID": ""}, "conveyor x", "Try this")


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (httpx.ConnectError("All connection attempts failed"), "cannot reach the server at "
         "http://127.0.0.1:9: All connection attempts failed"),
        (JobGoneError(401, "token revoked"), "the server refused this job's token (server "
         "answered 401: token revoked): the job has finished"),
    ],
)  # fmt: skip
def test_failures_after_the_retries_are_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, error: Exception, message: str
) -> None:
    for name, value in JOB_ENV.items():
        monkeypatch.setenv(name, value)

    async def call(_: object) -> None:
        raise error

    with pytest.raises(ConveyorError) as caught:
        run_in_job("conveyor x", call)
    assert message in str(caught.value)
