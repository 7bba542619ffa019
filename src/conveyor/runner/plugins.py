"""Plugins, as a job runs them: fetched with git into the plugins directory, pinned by `#ref`,
their configuration given to every phase as environment variables.

A source is anything git can clone — a URL, `git@host:path`, a local path or `file://` URL —
and `github.com/org/repo` stands for `https://github.com/org/repo`. Each source and ref gets a
directory of its own, so jobs pinned to different versions never share one; a flock makes
concurrent jobs on one host fetch a plugin once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from conveyor.errors import JobSetupError
from conveyor.runner.children import run_child
from conveyor.runner.filelock import lock_file

Say = Callable[[str], Awaitable[None]]
_HAS_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://|^git@|^[/.]")


@dataclass(frozen=True)
class PluginRef:
    source: str
    config: Any = None
    ref: str = ""
    location: str = ""
    name: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def parse(source: str, config: Any = None) -> PluginRef:
        location, _, ref = source.partition("#")
        name = _name(location)
        return PluginRef(source, config, ref, location, name, config_env(name, config))

    @property
    def vendored(self) -> bool:
        """A path relative to the repository: the plugin is kept in it, not fetched."""
        return self.location.startswith(".")

    @property
    def url(self) -> str:
        if _HAS_SCHEME.match(self.location):
            return self.location
        return f"https://{self.location}"


def parse_plugins(text: str) -> list[PluginRef]:
    """`CONVEYOR_PLUGINS` (a JSON list of `{source, config}`) → plugins; ValueError if bad."""
    if not text.strip():
        return []
    items = json.loads(text)
    if not isinstance(items, list):
        raise TypeError("must be a JSON list")
    plugins = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("source"), str):
            raise TypeError(f"each plugin must have a 'source', got {item!r}")
        plugins.append(PluginRef.parse(item["source"], item.get("config")))
    return plugins


def _name(location: str) -> str:
    base = location.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    base = base.removesuffix(".git").removesuffix("-buildkite-plugin")
    return base


def _env_word(text: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", text.upper()).strip("_")


def config_env(name: str, config: Any) -> dict[str, str]:
    """`CONVEYOR_PLUGIN_<NAME>_<KEY>` (and the `BUILDKITE_PLUGIN_` name) for each value of the
    plugin's configuration; lists and mappings nest (`_0`, `_KEY`), booleans are true/false."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}_{_env_word(str(key))}", sub)
        elif isinstance(value, list):
            for index, sub in enumerate(value):
                walk(f"{prefix}_{index}", sub)
        elif isinstance(value, bool):
            flat[prefix] = "true" if value else "false"
        elif value is not None:
            flat[prefix] = str(value)

    if isinstance(config, dict):
        walk(_env_word(name), config)
    env = {}
    for key, value in flat.items():
        env[f"CONVEYOR_PLUGIN_{key}"] = value
        env[f"BUILDKITE_PLUGIN_{key}"] = value
    return env


def plugin_dir(plugins_path: Path, plugin: PluginRef) -> Path:
    digest = hashlib.sha256(plugin.source.encode()).hexdigest()[:12]
    return plugins_path / f"{_env_word(plugin.name).lower() or 'plugin'}-{digest}"


async def fetch(plugin: PluginRef, plugins_path: Path, *, env: Mapping[str, str], say: Say) -> Path:
    """The plugin's checkout at its ref; raises `JobSetupError` when it cannot be had."""
    target = plugin_dir(plugins_path, plugin)
    await anyio.Path(plugins_path).mkdir(parents=True, exist_ok=True)
    # Abandoned if the job is canceled meanwhile: the executor exits soon after, letting go.
    lock = await anyio.to_thread.run_sync(
        lock_file, target.with_suffix(".lock"), abandon_on_cancel=True
    )
    try:
        if await anyio.Path(target / ".git").is_dir():
            return target
        tmp = target.with_suffix(".partial")
        await anyio.to_thread.run_sync(functools.partial(shutil.rmtree, tmp, ignore_errors=True))
        git_env = {**env, "GIT_TERMINAL_PROMPT": "0"}
        shown = without_credentials(plugin.source)
        await say(f"fetching plugin {shown}")
        args = ["git", "clone", "--quiet", "--", plugin.url, str(tmp)]
        if await run_child(args, env=git_env, cwd=plugins_path):
            raise JobSetupError(
                f"plugin {shown}: git could not clone {without_credentials(plugin.url)}"
            )
        if plugin.ref:
            checkout = ["git", "checkout", "--quiet", "--force", plugin.ref]
            if await run_child(checkout, env=git_env, cwd=tmp):
                await anyio.to_thread.run_sync(
                    functools.partial(shutil.rmtree, tmp, ignore_errors=True)
                )
                raise JobSetupError(f"plugin {shown}: no ref {plugin.ref!r} in its repository")
        await anyio.Path(tmp).rename(target)
        return target
    finally:
        await anyio.to_thread.run_sync(os.close, lock)


def without_credentials(url: str) -> str:
    """`url` fit for a log: a user and password in it (`https://user:token@host/…`) dropped."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url)
