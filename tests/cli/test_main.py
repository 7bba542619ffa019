"""The root command: every command is listed, each loads only when it runs, and the agent's
start path stays clear of what it does not need (a cost in resident memory for its whole life).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import click
import pytest

from conveyor.cli.main import COMMANDS, cli
from tests.cli.procs import clean_env, conveyor

pytestmark = pytest.mark.anyio

# Modules `conveyor agent start` must not load: the YAML parser (only for --config), the
# pipeline parser, the server and its dependencies, and rich/pygments (httpx's own CLI).
NOT_IN_AGENT = (
    "rich", "pygments", "ruamel", "yaml", "conveyor.pipeline", "conveyor.server",
    "conveyor.storage", "conveyor.local", "sqlalchemy", "fastapi", "uvicorn", "alembic",
)  # fmt: skip

# The real `conveyor agent start`, stopped when its first worker registers: by then the pool
# is up (HTTP client, lock service, worker). It prints the modules loaded at that point.
AGENT_START = """
import json, sys
import conveyor.cli.main  # first, as the `conveyor` script and `python -m conveyor` do
from conveyor.client import AgentClient
from conveyor.errors import APIError

async def register(self, body):
    print(json.dumps(sorted(sys.modules)), flush=True)
    raise APIError(401, "stopped by the test")

AgentClient.register = register
sys.argv = ["conveyor", "agent", "start", *sys.argv[1:]]
conveyor.cli.main.main()
"""


def _loaded(modules: list[str], top: str) -> list[str]:
    return [m for m in modules if m == top or m.startswith(top + ".")]


async def test_agent_start_loads_nothing_it_does_not_need(tmp_path: Path) -> None:
    argv = [
        sys.executable, "-c", AGENT_START, "--endpoint", "http://127.0.0.1:9", "--token", "t",
        "--build-path", str(tmp_path / "builds"), "--locks-dir", str(tmp_path / "locks"),
    ]  # fmt: skip
    with anyio.fail_after(60):
        done = await anyio.run_process(argv, env=clean_env(HOME=str(tmp_path)), check=False)
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 1 and "stopped by the test" in stderr, stderr
    modules = json.loads(stdout.splitlines()[0])
    assert "conveyor.agent.pool" in modules  # it did get as far as the pool
    loaded = {top: _loaded(modules, top) for top in NOT_IN_AGENT}
    assert not any(loaded.values()), {top: found for top, found in loaded.items() if found}
    # Nor the other commands' modules.
    commands = {f"conveyor.cli.{module}" for module, _ in COMMANDS.values()}
    assert sorted(commands & set(modules)) == ["conveyor.cli.agent"]


def test_every_command_resolves_to_itself() -> None:
    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(COMMANDS)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name
    assert cli.get_command(ctx, "no-such-command") is None


async def test_help_lists_every_command_with_its_short_help() -> None:
    result = await conveyor("--help")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("Commands:\n", 1)[1].splitlines()
    ctx = click.Context(cli)
    for name, line in zip(sorted(COMMANDS), listed, strict=True):
        command = cli.get_command(ctx, name)
        assert command is not None
        short = command.get_short_help_str(limit=45).rstrip(".")
        assert line.split()[:1] == [name] and short[:20] in line, (name, line)
