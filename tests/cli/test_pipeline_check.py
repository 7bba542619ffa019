"""`conveyor pipeline check`: lint pipeline files without running them."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.cli.procs import CONVEYOR, conveyor

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]


async def test_valid_and_invalid_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    await anyio.Path(bad).write_text("steps:\n  - label: tests\n    command: x\n    env: [a]\n")
    warned = tmp_path / "warned.yml"
    await anyio.Path(warned).write_text("steps:\n  - command: x\n    flavour: mint\n")
    good = await conveyor("pipeline", "check", str(REPO / "examples" / "pipeline.yml"), str(warned))
    assert good.returncode == 0
    assert "pipeline.yml: ok (5 steps)" in good.stdout
    assert f"{warned}:3:5: unknown or not yet supported key 'flavour'" in good.stderr

    result = await conveyor("pipeline", "check", str(bad), str(warned))
    assert result.returncode == 1
    assert f"error: {bad}:4:10: 'env' must be a mapping" in result.stderr
    assert "in step 'tests'" in result.stderr
    assert "warned.yml: ok" in result.stdout  # the other files are still checked


async def test_unreadable_file_and_stdin(tmp_path: Path) -> None:
    binary = tmp_path / "bin.yml"
    await anyio.Path(binary).write_bytes(b"\xff\xfe\x00")
    result = await conveyor("pipeline", "check", str(binary), str(tmp_path / "missing.yml"))
    assert result.returncode == 1
    assert "is not UTF-8 text" in result.stderr
    assert "cannot read" in result.stderr and "missing.yml" in result.stderr
    assert "Traceback" not in result.stderr

    import sys

    done = await anyio.run_process(
        [*CONVEYOR, "pipeline", "check", "-"], input=b"- wait\n- command: echo\n", check=False
    )
    assert done.returncode == 0, done.stderr
    assert b"-: ok (2 steps)" in done.stdout
    assert sys.executable in CONVEYOR


async def test_a_depends_on_cycle_is_an_error(tmp_path: Path) -> None:
    # `a` waits for `c`, which comes after a wait that waits for `a`.
    cyclic = tmp_path / "cyclic.yml"
    await anyio.Path(cyclic).write_text(
        "steps:\n  - {key: a, command: a, depends_on: c}\n  - wait\n  - {key: c, command: c}\n"
    )
    result = await conveyor("pipeline", "check", str(cyclic))
    assert result.returncode == 1
    assert f"error: {cyclic}:2: depends_on forms a cycle in step 'a'" in result.stderr
