"""Pipelines written with the `buildkite-sdk` package (a real external client of the format)
run in `conveyor run` as they say: from its YAML and from its JSON output."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from buildkite_sdk import BlockStep, CommandStep, GroupStep, Pipeline

from tests.cli.procs import conveyor

pytestmark = pytest.mark.anyio


def sdk_pipeline() -> Pipeline:
    pipeline = Pipeline()
    pipeline.add_environment_variable("WHO", "${NAME:-sdk}")
    pipeline.add_step(CommandStep(label="compile", key="compile", command="echo compiled $WHO"))
    pipeline.add_step(
        CommandStep(
            label="test {{matrix.os}}",
            commands=["echo testing on {{matrix.os}}"],
            depends_on=["compile"],
            matrix={"setup": {"os": ["linux", "mac"]}},
        )
    )
    pipeline.add_step(
        CommandStep(label="never", command="echo skipped", step_if='build.branch == "nope"')
    )
    pipeline.add_step(CommandStep(label="soft", command="exit 2", soft_fail=True))
    pipeline.add_step("wait")
    pipeline.add_step(
        GroupStep(group="checks", steps=[{"label": "in-group", "command": "echo grouped"}])
    )
    pipeline.add_step(BlockStep(block="Ship?", key="ship"))
    pipeline.add_step(CommandStep(label="after", command="echo shipped", depends_on="ship"))
    return pipeline


@pytest.mark.parametrize("form", ["yaml", "json"])
async def test_sdk_pipeline_runs_as_written(tmp_path: Path, form: str) -> None:
    pipeline = sdk_pipeline()
    text = pipeline.to_yaml() if form == "yaml" else pipeline.to_json()
    await anyio.Path(tmp_path / f"pipeline.{form}").write_text(text)
    result = await conveyor("run", "--unblock", f"pipeline.{form}", cwd=tmp_path, timeout=90)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "compile │ compiled sdk\n" in out
    assert "test linux │ testing on linux\n" in out
    assert "test mac │ testing on mac\n" in out
    assert "in-group │ grouped\n" in out
    assert "after │ shipped\n" in out
    assert "never │" not in out  # its `if` is false on this branch
    assert "soft fail" in out
    assert "Build local#1: passed" in out
