"""One job driven by hand through the agent API: accept, start, log chunks, finish."""

from __future__ import annotations

import gzip

import httpx
import pytest

from conveyor import protocol as p
from conveyor.client import JobClient
from conveyor.errors import APIError, JobGoneError
from conveyor.server.service import ServerHandle
from tests.harness import Api
from tests.server.drive import finish, new_agent, take_job

pytestmark = pytest.mark.anyio

PIPELINE = """\
env:
  PIPELINE_ENV: from-pipeline
steps:
  - label: ":hammer: compile"
    key: compile
    command: make all
    env:
      STEP_ENV: from-step
      CONVEYOR_JOB_ID: faked
"""


async def _get_job(api: Api, job_id: str) -> p.JobOut:
    r = await api.http.get(f"/api/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return p.JobOut.model_validate(r.json())


async def _get_build(api: Api, build: p.BuildOut) -> p.BuildOut:
    r = await api.http.get(f"/api/v1/pipelines/{build.pipeline}/builds/{build.number}")
    assert r.status_code == 200, r.text
    return p.BuildOut.model_validate(r.json())


async def test_full_job_flow(server: ServerHandle, http: httpx.AsyncClient, api: Api) -> None:
    build = await api.create_build(
        PIPELINE,
        slug="flow",
        branch="feature/x",
        commit="0123abcd",
        message="Fix the thing",
        env={"BUILD_ENV": "from-build", "PIPELINE_ENV": "overridden-by-pipeline"},
    )
    assert (build.state, build.number) == (p.BuildState.SCHEDULED, 1)
    [job_out] = build.jobs
    assert (job_out.state, job_out.step_key, job_out.label) == (
        p.JobState.SCHEDULED,
        "compile",
        ":hammer: compile",
    )

    agent = await new_agent(http, server, "builder")
    ping = await agent.ping()
    assert ping.job is not None and ping.job.id == job_out.id
    assert (await _get_job(api, job_out.id)).state == p.JobState.ASSIGNED

    spec = await agent.accept(job_out.id)
    assert (spec.id, spec.build_id, spec.build_number, spec.pipeline, spec.step_key) == (
        job_out.id,
        build.id,
        1,
        "flow",
        "compile",
    )
    assert (spec.label, spec.command) == (":hammer: compile", "make all")
    assert spec.token.startswith(p.JOB_TOKEN_PREFIX)
    assert spec.chunks_max_size_bytes == 4096
    env = spec.env
    for name in ["JOB_ID", "BUILD_ID", "BUILD_NUMBER", "PIPELINE_SLUG", "STEP_KEY", "BRANCH"]:
        assert env[f"CONVEYOR_{name}"] == env[f"BUILDKITE_{name}"], name
    assert env["CONVEYOR_JOB_ID"] == job_out.id  # the step cannot fake it
    assert env["CONVEYOR_BUILD_ID"] == build.id
    assert env["CONVEYOR_BUILD_NUMBER"] == "1"
    assert env["CONVEYOR_PIPELINE_SLUG"] == "flow"
    assert env["CONVEYOR_STEP_KEY"] == "compile"
    assert env["CONVEYOR_COMMAND"] == "make all"
    assert env["CONVEYOR_LABEL"] == ":hammer: compile"
    assert (env["CONVEYOR_BRANCH"], env["CONVEYOR_COMMIT"]) == ("feature/x", "0123abcd")
    assert env["CONVEYOR_MESSAGE"] == "Fix the thing"
    assert env["CONVEYOR_RETRY_COUNT"] == "0"
    assert env["CONVEYOR_BUILD_URL"] == f"{server.url}/builds/flow/1"
    assert (env["CI"], env["CONVEYOR"], env["BUILDKITE"]) == ("true", "true", "true")
    assert env["BUILD_ENV"] == "from-build"
    assert env["PIPELINE_ENV"] == "from-pipeline"
    assert env["STEP_ENV"] == "from-step"
    assert (await _get_job(api, job_out.id)).state == p.JobState.ACCEPTED

    job = agent.job_client(spec)
    assert (await job.state()).state == p.JobState.ACCEPTED
    await job.start()
    running = await _get_build(api, build)
    assert running.state == p.BuildState.RUNNING
    assert running.started_at is not None
    assert running.jobs[0].state == p.JobState.RUNNING
    assert running.jobs[0].agent_id is not None
    assert (await job.state()).state == p.JobState.RUNNING

    # Out of order: the second chunk arrives first.
    acks = [
        await job.upload_chunk(2, 5, b" worl"),
        await job.upload_chunk(1, 0, b"hello"),
        await job.upload_chunk(3, 10, b"d\r\n"),
    ]
    assert [(a.sequence, a.offset, a.size, a.stored) for a in acks] == [
        (2, 5, 5, True),
        (1, 0, 5, True),
        (3, 10, 3, True),
    ]
    # Retried twice (a lost answer): stored once, counted once.
    for _ in range(2):
        again = await job.upload_chunk(1, 0, b"hello")
        assert (again.stored, again.size) == (False, 5)
    assert (await _get_job(api, job_out.id)).log_size == 13

    await finish(job, 0)
    done = await _get_build(api, build)
    assert done.state == p.BuildState.PASSED
    assert done.finished_at is not None
    [finished] = done.jobs
    assert (finished.state, finished.exit_status, finished.passed) == (
        p.JobState.FINISHED,
        0,
        True,
    )
    assert finished.log_size == 13

    r = await api.http.get(f"/api/v1/jobs/{job_out.id}/log")
    assert r.status_code == 200
    assert r.content == b"hello world\r\n"
    assert (r.headers["x-conveyor-log-gaps"], r.headers["x-conveyor-log-size"]) == ("0", "13")

    # The finished job's token is revoked: every job call says the job is gone.
    with pytest.raises(JobGoneError) as gone:
        await job.state()
    assert gone.value.status == 401
    with pytest.raises(JobGoneError):
        await job.upload_chunk(4, 13, b"late")
    with pytest.raises(JobGoneError):
        await finish(job, 0)
    # The agent is free again and nothing else is queued.
    agents = (await api.http.get("/api/v1/agents")).json()
    assert agents[0]["current_job_id"] is None
    assert (await agent.ping()).job is None


async def test_a_job_token_is_scoped_to_its_job(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    await api.create_build("steps:\n  - command: one\n  - command: two\n")
    first_spec, first = await take_job(await new_agent(http, server, "a1"))
    second_spec, _ = await take_job(await new_agent(http, server, "a2"))
    assert first_spec.id != second_spec.id

    # The first job's token on the second job's paths.
    borrowed = JobClient(http, first_spec.token, second_spec.id)
    for call in [borrowed.state, borrowed.start]:
        with pytest.raises(JobGoneError) as caught:
            await call()
        assert caught.value.status == 401
    with pytest.raises(JobGoneError):
        await borrowed.upload_chunk(1, 0, b"not mine")
    with pytest.raises(JobGoneError):
        await finish(borrowed, 0)
    # Nothing happened to the second job; the first token still works on its own job.
    second = await _get_job(api, second_spec.id)
    assert (second.state, second.log_size) == (p.JobState.ACCEPTED, 0)
    assert (await first.state()).state == p.JobState.ACCEPTED
    # An agent token is no job token either.
    r = await http.get(f"/agent/v1/jobs/{first_spec.id}", headers={"Authorization": "Token x"})
    assert r.status_code == 401


async def test_out_of_order_calls_and_a_failing_finish(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    build = await api.create_build("steps:\n  - command: exit 3\n")
    agent = await new_agent(http, server, "a1")
    with pytest.raises(APIError) as caught:
        await agent.accept("no-such-job")
    assert caught.value.status == 404
    first_spec, first_job = await take_job(agent)
    # Accepting again (a retry whose answer was lost): the same job with a fresh token; the
    # first token is revoked.
    spec = await agent.accept(first_spec.id)
    assert spec.id == first_spec.id
    assert spec.token != first_spec.token
    with pytest.raises(JobGoneError):
        await first_job.state()
    job = agent.job_client(spec)
    # Starting twice (a retry as well) is harmless.
    await job.start()
    await job.start()
    assert (await job.state()).state == p.JobState.RUNNING
    # But a running job is not accepted again.
    with pytest.raises(APIError) as caught:
        await agent.accept(spec.id)
    assert caught.value.status == 409
    assert "running" in str(caught.value)

    await job.finish(
        p.FinishRequest(
            exit_status=-1,
            signal="SIGKILL",
            signal_reason=p.SignalReason.AGENT_STOP,
            finished_at=build.created_at,
            chunks_failed_count=2,
        )
    )
    done = await _get_build(api, build)
    assert done.state == p.BuildState.FAILED
    [out] = done.jobs
    assert (out.exit_status, out.signal, out.signal_reason, out.passed) == (
        -1,
        "SIGKILL",
        "agent_stop",
        False,
    )
    assert out.chunks_failed_count == 2


async def test_log_is_served_whole_in_offset_order_with_gaps_counted(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    build = await api.create_build("steps:\n  - command: long\n  - command: gappy\n")
    long_spec, long_job = await take_job(await new_agent(http, server, "a1"))
    gappy_spec, gappy_job = await take_job(await new_agent(http, server, "a2"))
    assert {long_spec.id, gappy_spec.id} == {j.id for j in build.jobs}

    # More chunks than the log endpoint reads per query, uploaded in reverse.
    await long_job.start()
    chunks = [bytes([65 + i]) * (100 + i) for i in range(12)]
    offsets = [sum(len(c) for c in chunks[:i]) for i in range(len(chunks))]
    for i in reversed(range(len(chunks))):
        await long_job.upload_chunk(i + 1, offsets[i], chunks[i])
    await finish(long_job, 0)
    r = await api.http.get(f"/api/v1/jobs/{long_spec.id}/log")
    assert r.content == b"".join(chunks)
    assert r.headers["x-conveyor-log-gaps"] == "0"
    assert r.headers["content-type"] == "application/octet-stream"

    await gappy_job.start()
    await gappy_job.upload_chunk(1, 0, b"aaaa")
    await gappy_job.upload_chunk(3, 8, b"cccc")  # the chunk at 4 never arrives
    await gappy_job.upload_chunk(4, 12, b"dd")
    await finish(gappy_job, 0)
    r = await api.http.get(f"/api/v1/jobs/{gappy_spec.id}/log")
    assert r.content == b"aaaaccccdd"
    assert (r.headers["x-conveyor-log-gaps"], r.headers["x-conveyor-log-size"]) == ("1", "14")


async def test_chunk_upload_rules(server: ServerHandle, http: httpx.AsyncClient, api: Api) -> None:
    await api.create_build("steps:\n  - command: one\n")
    spec, job = await take_job(await new_agent(http, server, "a1"))
    url = f"/agent/v1/jobs/{spec.id}/chunks"
    auth = {"Authorization": f"Token {spec.token}"}

    # Accepted, not yet started: the agent may already send its own setup output.
    assert (await job.upload_chunk(1, 0, b"setup\r\n")).stored
    await job.start()

    r = await http.post(
        url, params={"sequence": 2, "offset": 7, "size": 10}, content=b"12345", headers=auth
    )
    assert r.status_code == 400
    assert r.json()["message"] == "size says 10 bytes but the body has 5"
    for bad in [{"sequence": 0, "offset": 7, "size": 0}, {"sequence": 2, "offset": -1}]:
        r = await http.post(url, params=bad, content=b"", headers=auth)
        assert r.status_code == 422, bad
    # Over the chunk size limit the server told the agent in JobSpec.
    big = b"x" * (spec.chunks_max_size_bytes + 1)
    r = await http.post(
        url, params={"sequence": 2, "offset": 7, "size": len(big)}, content=big, headers=auth
    )
    assert r.status_code == 413

    # gzip: `size` counts the bytes after decompression.
    data = b"compressed line\r\n" * 50
    gzip_headers = {**auth, "Content-Encoding": "gzip", "Content-Type": "application/octet-stream"}
    r = await http.post(
        url,
        params={"sequence": 2, "offset": 7, "size": len(data)},
        content=gzip.compress(data),
        headers=gzip_headers,
    )
    assert r.status_code == 200, r.text
    assert p.ChunkAck.model_validate(r.json()) == p.ChunkAck(
        sequence=2, offset=7, size=len(data), stored=True
    )
    # The same chunk again, uncompressed this time: recognised as the same chunk.
    assert (await job.upload_chunk(2, 7, data)).stored is False
    end = 7 + len(data)
    r = await http.post(
        url, params={"sequence": 3, "offset": end, "size": 4}, content=b"nope", headers=gzip_headers
    )
    assert r.status_code == 400
    assert "gzip" in r.json()["message"]

    # Another chunk at a stored offset: a conflict, not a job gone.
    with pytest.raises(APIError) as caught:
        await job.upload_chunk(3, 7, b"other")
    assert caught.value.status == 409
    assert not isinstance(caught.value, JobGoneError)

    await finish(job, 0)
    assert await api.log(spec.id) == b"setup\r\n" + data
    assert (await api.http.get(f"/api/v1/jobs/{spec.id}")).json()["log_size"] == end
