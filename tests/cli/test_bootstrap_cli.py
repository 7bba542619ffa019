"""`conveyor bootstrap --job FILE`: one job on this machine, no server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.procs import conveyor

pytestmark = pytest.mark.anyio


async def test_a_job_file_runs_with_hooks_and_its_exit_status(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "environment").write_text("export GREETING=hello\n")
    (hooks / "pre-exit").write_text('echo "bye from pre-exit"\n')
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {
                "command": 'echo "$GREETING $NAME in $PWD"; echo "$API_TOKEN"; exit 3',
                "env": {"NAME": "world", "API_TOKEN": "do-not-print-me"},
            }
        )
    )
    log = tmp_path / "job.log"
    work = tmp_path / "work"
    result = await conveyor(
        "bootstrap", "--job", str(job), "--hooks-path", str(hooks), "--dir", str(work),
        "--log-file", str(log),
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert f"hello world in {work}" in result.stdout
    assert "bye from pre-exit" in result.stdout
    assert "do-not-print-me" not in result.stdout and "[REDACTED]" in result.stdout
    # The log file holds what a server would store: the same lines, timestamped.
    stored = log.read_bytes()
    assert b"hello world in" in stored and b"\x1b_ct;t=" in stored


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "job.json:1:2: not JSON"),
        ('{"comand": "x"}', "job.json: comand: Extra inputs are not permitted"),
        ('{"env": {"A": 1}}', "job.json: env.A: Input should be a valid string"),
        ('{"plugins": [{"config": {}}]}', "job.json: plugins.0.source: Field required"),
    ],
)
async def test_a_bad_job_file_is_named_with_its_field(
    tmp_path: Path, content: str, message: str
) -> None:
    job = tmp_path / "job.json"
    job.write_text(content)
    result = await conveyor("bootstrap", "--job", str(job), cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_missing_job_file(tmp_path: Path) -> None:
    result = await conveyor("bootstrap", "--job", str(tmp_path / "nope.json"))
    assert result.returncode == 2
    assert "cannot read job file" in result.stderr


async def test_a_job_with_a_repository_never_empties_a_directory_it_was_not_given(
    tmp_path: Path,
) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"command": "true", "repository": str(tmp_path / "repo")}))
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    result = await conveyor("bootstrap", "--job", str(job), cwd=tmp_path)
    assert result.returncode == 2
    assert "give --dir" in result.stderr
    result = await conveyor("bootstrap", "--job", str(job), "--dir", str(tmp_path))
    assert result.returncode == 2
    assert "is not empty and not a git checkout" in result.stderr
    assert precious.read_text() == "keep me"
