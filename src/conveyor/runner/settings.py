"""What the job executor reads from its environment: the job as the agent (or `conveyor
bootstrap --job`) describes it. Hooks may change some of it (`Executor.refresh`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.errors import JobSetupError
from conveyor.runner import plugins
from conveyor.runner.plugins import PluginRef


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    return default if value is None else value.lower() in ("1", "true", "yes", "on")


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise JobSetupError(f"{name} must be a number of seconds, got {value!r}") from None
    if seconds < 0:
        raise JobSetupError(f"{name} must not be negative, got {value!r}")
    return seconds


@dataclass(frozen=True)
class Settings:
    command: str
    shell: str = "/bin/bash -e -c"
    checkout_path: Path = field(default_factory=Path.cwd)
    hooks_paths: tuple[Path, ...] = ()
    plugins_path: Path = Path("~/.conveyor/plugins")
    plugins: tuple[PluginRef, ...] = ()
    plugins_enabled: bool = True
    allowed_plugins: str = ""
    local_hooks_enabled: bool = True
    repository: str = ""
    commit: str = "HEAD"
    branch: str = ""
    artifact_paths: tuple[str, ...] = ()
    git_mirrors_path: Path | None = None
    git_mirrors_lock_timeout: float = 300.0
    cancel_grace: float = 10.0

    @staticmethod
    def from_env(env: Mapping[str, str]) -> Settings:
        """The job as the agent described it in the executor's environment; a bad value is a
        `JobSetupError` naming the variable."""
        try:
            found = plugins.parse_plugins(env.get("CONVEYOR_PLUGINS", ""))
        except (ValueError, TypeError) as exc:
            raise JobSetupError(f"CONVEYOR_PLUGINS is not a list of plugins: {exc}") from None
        split = os.pathsep
        return Settings(
            command=env.get("CONVEYOR_COMMAND", ""),
            shell=env.get("CONVEYOR_SHELL") or Settings.shell,
            checkout_path=Path(env.get("CONVEYOR_BUILD_CHECKOUT_PATH") or Path.cwd()),
            hooks_paths=tuple(
                Path(p) for p in env.get("CONVEYOR_HOOKS_PATH", "").split(split) if p
            ),
            plugins_path=Path(
                env.get("CONVEYOR_PLUGINS_PATH") or Settings.plugins_path
            ).expanduser(),
            plugins=tuple(found),
            plugins_enabled=_flag(env, "CONVEYOR_PLUGINS_ENABLED", True),
            allowed_plugins=env.get("CONVEYOR_ALLOWED_PLUGINS", ""),
            local_hooks_enabled=_flag(env, "CONVEYOR_LOCAL_HOOKS_ENABLED", True),
            repository=env.get("CONVEYOR_REPO", ""),
            commit=env.get("CONVEYOR_COMMIT") or "HEAD",
            branch=env.get("CONVEYOR_BRANCH", ""),
            artifact_paths=tuple(
                p for p in env.get("CONVEYOR_ARTIFACT_PATHS", "").split(";") if p.strip()
            ),
            git_mirrors_path=Path(mirrors)
            if (mirrors := env.get("CONVEYOR_GIT_MIRRORS_PATH"))
            else None,
            git_mirrors_lock_timeout=_seconds(env, "CONVEYOR_GIT_MIRRORS_LOCK_TIMEOUT", 300.0),
            cancel_grace=_seconds(env, "CONVEYOR_CANCEL_GRACE_PERIOD", 10.0),
        )
