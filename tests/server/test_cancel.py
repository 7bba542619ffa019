"""Canceling a build through the REST API, with its jobs in every state an agent can see."""

from __future__ import annotations

import httpx
import pytest

from conveyor import protocol as p
from conveyor.errors import APIError, JobGoneError
from conveyor.server.service import ServerHandle
from tests.harness import Api
from tests.server.drive import finish, new_agent, take_job

pytestmark = pytest.mark.anyio


async def test_cancel_a_build_with_jobs_in_every_state(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    build = await api.create_build(
        """
steps:
  - {label: running, command: a, agents: {queue: running}}
  - {label: accepted, command: b, agents: {queue: accepted}}
  - {label: assigned, command: c, agents: {queue: assigned}}
  - {label: scheduled, command: d, agents: {queue: nobody}}
  - wait
  - {label: pending, command: e}
"""
    )
    running_spec, running = await take_job(await new_agent(http, server, "r", {"queue": "running"}))
    await running.start()
    _, accepted = await take_job(await new_agent(http, server, "a", {"queue": "accepted"}))
    assigner = await new_agent(http, server, "s", {"queue": "assigned"})
    assigned = await assigner.ping()
    assert assigned.job is not None

    path = f"/api/v1/pipelines/test/builds/{build.number}"
    r = await api.http.post(f"{path}/cancel")
    assert r.status_code == 200, r.text
    canceled = p.BuildOut.model_validate(r.json())
    assert canceled.state == p.BuildState.CANCELING
    assert {j.label: j.state for j in canceled.jobs} == {
        "running": p.JobState.CANCELING,
        "accepted": p.JobState.CANCELING,
        "assigned": p.JobState.CANCELED,
        "scheduled": p.JobState.CANCELED,
        "pending": p.JobState.CANCELED,
    }

    # The agents learn it from the job state; the one that had not accepted yet cannot.
    assert (await running.state()).state == p.JobState.CANCELING
    with pytest.raises(APIError) as caught:
        await assigner.accept(assigned.job.id)
    assert caught.value.status == 409
    await running.upload_chunk(1, 0, b"stopping\r\n")  # a canceling job still takes its log
    await running.finish(
        p.FinishRequest(
            exit_status=-1,
            signal="SIGTERM",
            signal_reason=p.SignalReason.CANCEL,
            finished_at=build.created_at,
        )
    )
    still = p.BuildOut.model_validate((await api.http.get(path)).json())
    assert still.state == p.BuildState.CANCELING
    # Finishing a canceling job, whatever its exit status, makes it canceled.
    await finish(accepted, 0)
    with pytest.raises(JobGoneError):
        await accepted.state()

    done = p.BuildOut.model_validate((await api.http.get(path)).json())
    assert done.state == p.BuildState.CANCELED
    assert done.finished_at is not None
    assert {j.label: j.state for j in done.jobs} == {
        "running": p.JobState.CANCELED,
        "accepted": p.JobState.CANCELED,
        "assigned": p.JobState.CANCELED,
        "scheduled": p.JobState.CANCELED,
        "pending": p.JobState.CANCELED,
    }
    assert await api.log(running_spec.id) == b"stopping\r\n"

    # Canceling a finished build changes nothing; an unknown build is a 404.
    again = p.BuildOut.model_validate((await api.http.post(f"{path}/cancel")).json())
    assert (again.state, again.version) == (done.state, done.version)
    assert (await api.http.post("/api/v1/pipelines/test/builds/99/cancel")).status_code == 404
    # Nothing of the build is offered to anyone any more.
    assert (await (await new_agent(http, server, "late")).ping()).job is None


async def test_an_agent_whose_assigned_job_is_canceled_is_shown_idle(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    build = await api.create_build("steps:\n  - command: one\n")
    agent = await new_agent(http, server, "a1")
    ping = await agent.ping()
    assert ping.job is not None
    [listed] = (await api.http.get("/api/v1/agents")).json()
    assert listed["current_job_id"] == ping.job.id
    r = await api.http.post(f"/api/v1/pipelines/test/builds/{build.number}/cancel")
    assert r.json()["state"] == p.BuildState.CANCELED
    [listed] = (await api.http.get("/api/v1/agents")).json()
    assert listed["current_job_id"] is None
