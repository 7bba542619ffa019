"""The real `conveyor artifact …` commands, run as a job's command would run them: with the
job's endpoint, token and id in the environment, against a real server on loopback."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from conveyor import protocol as p
from conveyor.client import new_http_client
from conveyor.server.service import ServerHandle
from tests.cli.procs import Result, clean_env, conveyor
from tests.harness import Api, running_server
from tests.server.drive import finish, new_agent, take_job

pytestmark = pytest.mark.anyio


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[ServerHandle]:
    async with running_server(database_url, tmp_path / "srv", artifact_max_size=4096) as handle:
        yield handle


def in_job(server: ServerHandle, spec: p.JobSpec) -> dict[str, str]:
    """The environment the agent gives a job (the Buildkite names work too)."""
    return clean_env(
        BUILDKITE_AGENT_ENDPOINT=server.url,
        BUILDKITE_AGENT_ACCESS_TOKEN=spec.token,
        BUILDKITE_JOB_ID=spec.id,
    )


def failed_clearly(result: Result, *words: str) -> None:
    """Exit 1, one line on stderr saying `words`, no traceback."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


async def write(path: Path, data: bytes) -> None:
    await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
    await anyio.Path(path).write_bytes(data)


async def test_upload_search_shasum_and_download(server: ServerHandle, tmp_path: Path) -> None:
    work = tmp_path / "work"
    files = {
        "dist/app.tar.gz": b"app",
        "dist/docs/index.html": b"<p>docs</p>",
        "reports/unit.xml": b"<testsuite/>",
    }
    for name, data in files.items():
        await write(work / name, data)
    async with Api(server) as api, new_http_client(server.url) as http:
        build = await api.create_build(
            "steps:\n  - {label: make, key: make, command: make}\n"
            "  - wait\n  - {label: use, command: use}\n"
        )
        agent = await new_agent(http, server, "cli")
        maker, maker_job = await take_job(agent)
        env = in_job(server, maker)

        uploaded = await conveyor(
            "artifact", "upload", "dist/**;reports/*.xml", "missing/*", env=env, cwd=work
        )
        assert uploaded.returncode == 0, uploaded.stderr
        assert uploaded.stderr == "conveyor: warning: no files match 'missing/*'\n"
        assert sorted(line.split(" (")[0] for line in uploaded.stdout.splitlines()[1:]) == [
            "uploaded dist/app.tar.gz", "uploaded dist/docs/index.html",
            "uploaded reports/unit.xml",
        ]  # fmt: skip
        assert uploaded.stdout.splitlines()[0] == "uploading 3 artifacts"

        # Refused before anything is read or sent.
        for glob, problem in [("../secret", "goes up (`..`)"), ("/etc/passwd", "is absolute")]:
            outside = await conveyor("artifact", "upload", glob, env=env, cwd=work)
            failed_clearly(outside, f"artifact glob {glob!r} {problem}")
        nothing = await conveyor("artifact", "upload", "nope/*", env=env, cwd=work)
        assert nothing.returncode == 0
        assert "nothing was uploaded" in nothing.stderr
        # Over the server's limit: one clear line, and the job goes on.
        await write(work / "huge.bin", b"x" * 5000)
        huge = await conveyor("artifact", "upload", "huge.bin", env=env, cwd=work)
        failed_clearly(huge, "huge.bin", "over this server's limit of 4096 bytes per artifact")
        await finish(maker_job)

        user, user_job = await take_job(agent)
        env = in_job(server, user)
        found = await conveyor("artifact", "search", "dist/**", env=env)
        assert found.returncode == 0, found.stderr
        rows = [line.split("\t") for line in found.stdout.splitlines()]
        assert [r[:2] for r in rows] == [["dist/app.tar.gz", "3"], ["dist/docs/index.html", "11"]]
        assert rows[0][2:] == [hashlib.sha256(b"app").hexdigest(), "make", maker.id]

        none = await conveyor("artifact", "search", "*.exe", env=env)
        failed_clearly(none, "no artifact of this build matches '*.exe'")
        none = await conveyor("artifact", "search", "dist/**", "--step", "use", env=env)
        failed_clearly(none, "no artifact of this build uploaded by step 'use' matches")

        shasum = await conveyor("artifact", "shasum", "reports/unit.xml", "--sha256", env=env)
        assert shasum.returncode == 0, shasum.stderr
        assert shasum.stdout == hashlib.sha256(b"<testsuite/>").hexdigest() + "\n"
        several = await conveyor("artifact", "shasum", "dist/**", env=env)
        failed_clearly(several, "2 artifacts match 'dist/**'", "give a query that matches one")

        out = tmp_path / "out"
        got = await conveyor("artifact", "download", "**", str(out), "--step", "make", env=env)
        assert got.returncode == 0, got.stderr
        for name, data in files.items():
            assert await anyio.Path(out / name).read_bytes() == data
        missing = await conveyor("artifact", "download", "nope", str(out), env=env)
        failed_clearly(missing, "no artifact of this build matches 'nope'")

        # Another build is never readable with a job's token.
        other = await api.create_build("steps:\n  - command: other\n", slug="other")
        for command in (["search", "**"], ["download", "**", str(out)], ["shasum", "x"]):
            refused = await conveyor("artifact", *command, "--build", other.id, env=env)
            failed_clearly(refused, "403", f"build {other.id} is not this job's build")
        mine = await conveyor("artifact", "search", "**", "--build", build.id, env=env)
        assert mine.returncode == 0 and len(mine.stdout.splitlines()) == 3

        # Once the job has finished, its token opens nothing.
        await finish(user_job)
        late = await conveyor("artifact", "search", "**", env=env)
        failed_clearly(late, "the server refused this job's token")


async def test_outside_a_job_and_help(tmp_path: Path) -> None:
    outside = await conveyor("artifact", "upload", "dist/**", cwd=tmp_path)
    failed_clearly(outside, "`conveyor artifact upload` works only inside a job")
    outside = await conveyor("artifact", "download", "x", "out", cwd=tmp_path)
    failed_clearly(outside, "`conveyor artifact download` works only inside a job")
    for command in ([], ["upload"], ["download"], ["search"], ["shasum"]):
        shown = await conveyor("artifact", *command, "--help")
        assert shown.returncode == 0, shown.stderr
        assert "Usage: conveyor artifact" in shown.stdout
    usage = await conveyor("artifact", "upload")
    assert usage.returncode == 2 and "Missing argument 'GLOB...'" in usage.stderr
