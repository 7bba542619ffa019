"""Artifacts end to end: one step uploads files (a 100 MB one among them) with `conveyor
artifact upload` and with its `artifact_paths`; after a `wait`, another step downloads them and
checks every byte against the SHA-256 the first step computed. On a server with two agents, and
in `conveyor run`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from conveyor import protocol as p
from tests.cli.procs import conveyor
from tests.harness import Api, running_agents, running_server

pytestmark = pytest.mark.anyio

BIG = 100_000_000
CONVEYOR = f"{sys.executable} -m conveyor"

PIPELINE = f"""\
steps:
  - label: make
    key: make
    command: |
      rm -rf dist && mkdir -p dist/sub
      head -c {BIG} /dev/urandom > big.bin
      echo small > dist/sub/small.txt
      sha256sum big.bin | cut -d" " -f1 > big.sha256
      {CONVEYOR} artifact upload "big.bin;big.sha256"
    artifact_paths: "dist/**/*.txt"
  - wait
  - label: use
    command: |
      rm -rf got
      {CONVEYOR} artifact download "big.*" got --step make
      {CONVEYOR} artifact download "dist/**" got
      test "$(sha256sum got/big.bin | cut -d" " -f1)" = "$(cat got/big.sha256)"
      test "$({CONVEYOR} artifact shasum big.bin --step make)" = "$(cat got/big.sha256)"
      test "$(cat got/dist/sub/small.txt)" = small
      {CONVEYOR} artifact search "**"
      rm -rf got
      echo verified
"""


async def test_artifacts_pass_between_steps_on_a_server_with_two_agents(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        running_agents(server, tmp_path / "builds", spawn=2),
        Api(server) as api,
    ):
        build = await api.create_build(PIPELINE)
        done = await api.wait_build(build, timeout=110)
        make, use = done.jobs
        make_log = (await api.log(make.id)).decode()
        use_log = (await api.log(use.id)).decode()
        r = await api.http.get(f"/api/v1/pipelines/test/builds/{build.number}/artifacts")
        listed = [p.ArtifactOut.model_validate(a) for a in r.json()]
    assert done.state == p.BuildState.PASSED, make_log + use_log
    assert [(a.path, a.step_key) for a in listed] == [
        ("big.bin", "make"), ("big.sha256", "make"), ("dist/sub/small.txt", "make"),
    ]  # fmt: skip
    assert listed[0].size == BIG
    # The artifact_paths were uploaded by the agent after the command, into the job's log.
    assert "~~~ Uploading artifacts" in make_log
    assert "uploaded dist/sub/small.txt (6 bytes, sha256 " in make_log
    assert f"uploaded big.bin (95.4 MiB, sha256 {listed[0].sha256})" in make_log
    assert "verified" in use_log
    assert f"big.bin\t{BIG}\t{listed[0].sha256}\tmake\t{make.id}" in use_log


async def test_artifact_paths_failures_fail_a_passed_job_only(
    database_url: str, tmp_path: Path
) -> None:
    """An upload that fails fails the job whose command passed; a failed command keeps its
    exit status, and its artifacts are uploaded all the same."""
    pipeline = (
        "steps:\n"
        "  - label: too big\n"
        "    command: head -c 5000 /dev/zero > big.bin\n"
        "    artifact_paths: big.bin\n"
        "  - label: failing\n"
        "    command: echo partial > partial.txt; exit 3\n"
        "    artifact_paths: [partial.txt, nothing-here/*]\n"
    )
    async with (
        running_server(database_url, tmp_path / "srv", artifact_max_size=1000) as server,
        running_agents(server, tmp_path / "builds", spawn=2),
        Api(server) as api,
    ):
        done = await api.wait_build(await api.create_build(pipeline))
        by_label = {j.label: j for j in done.jobs}
        too_big_log = (await api.log(by_label["too big"].id)).decode()
        failing_log = (await api.log(by_label["failing"].id)).decode()
        r = await api.http.get(f"/api/v1/pipelines/test/builds/{done.number}/artifacts")
    assert by_label["too big"].exit_status == 1, too_big_log
    assert "over this server's limit of 1000 bytes per artifact" in too_big_log
    assert by_label["failing"].exit_status == 3
    assert "conveyor: warning: no files match 'nothing-here/*'" in failing_log
    assert [a["path"] for a in r.json()] == ["partial.txt"]


async def test_a_canceled_job_uploads_nothing(database_url: str, tmp_path: Path) -> None:
    pipeline = (
        "steps:\n  - command: echo started; touch out.txt; sleep 60\n    artifact_paths: out.txt\n"
    )
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        running_agents(server, tmp_path / "builds", spawn=1),
        Api(server) as api,
    ):
        build = await api.create_build(pipeline)
        with anyio.fail_after(30):
            # Wait until the command has written its first line, then cancel the build.
            while not (build.jobs and build.jobs[0].log_size > 0):
                r = await api.http.get(
                    f"/api/v1/pipelines/test/builds/{build.number}",
                    params={"wait": 10, "after": build.version},
                )
                build = p.BuildOut.model_validate(r.json())
        r = await api.http.post(f"/api/v1/pipelines/test/builds/{build.number}/cancel")
        assert r.status_code == 200, r.text
        done = await api.wait_build(build)
        r = await api.http.get(f"/api/v1/pipelines/test/builds/{build.number}/artifacts")
    assert done.state == p.BuildState.CANCELED
    assert r.json() == []


async def test_artifacts_pass_between_steps_in_conveyor_run(tmp_path: Path) -> None:
    work = tmp_path / "work"
    await anyio.Path(work).mkdir()
    await anyio.Path(work / "pipeline.yml").write_text(PIPELINE)
    data = tmp_path / "data"
    result = await conveyor("run", "--data-dir", str(data), "--agents", "2", cwd=work, timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "use │ verified" in result.stdout
    assert "make │ uploaded dist/sub/small.txt (6 bytes, sha256 " in result.stdout
    # The content is in the run's data dir, stored once per SHA-256.
    stored = [f async for f in anyio.Path(data / "artifacts" / "sha256").glob("*/*")]
    sizes = sorted([(await f.stat()).st_size for f in stored])
    assert len(sizes) == 3 and sizes[-1] == BIG
