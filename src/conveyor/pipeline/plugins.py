"""`plugins:` on command steps: three spellings, one canonical form.

    plugins:                                  plugins:                 plugins:
      - docker#v5.8.0: {image: alpine}          - shellcheck#v1.0.0      docker#v5.8.0: {...}
                                                                         cache#v1: {...}
A list of one-key mappings, a list of bare names, or (the legacy form) one mapping holding
several plugins. Order is kept. Short names are expanded to the repository they stand for:
`docker` → `github.com/buildkite-plugins/docker-buildkite-plugin`, `org/thing` →
`github.com/org/thing-buildkite-plugin`; paths, URLs and `git@` sources are left alone.
Running plugins is the agent's business; here they are only read and kept.
"""

from __future__ import annotations

import re

from conveyor.pipeline.context import Context
from conveyor.pipeline.fields import is_null
from conveyor.pipeline.loader import MapEntry, MapNode, Node, ScalarNode, SeqNode, describe
from conveyor.pipeline.loader import to_plain as plain
from conveyor.pipeline.steps import Plugin

_LEFT_ALONE = re.compile(r"^([/.\\]|[a-z][a-z0-9+.-]*://|git@|[A-Za-z]:\\)")


def read_plugins(ctx: Context, entry: MapEntry) -> tuple[Plugin, ...]:
    if is_null(entry):
        return ()
    value = entry.value
    if isinstance(value, MapNode):  # legacy: one mapping of several plugins
        return tuple(_plugin(ctx, name, item.value) for name, item in value.entries.items())
    if not isinstance(value, SeqNode):
        raise ctx.error(f"'plugins' must be a list of plugins, got {describe(value)}", value.mark)
    plugins: list[Plugin] = []
    for item in value.items:
        if isinstance(item, ScalarNode) and isinstance(item.value, str) and item.value.strip():
            plugins.append(Plugin(source=full_source(item.value)))
        elif isinstance(item, MapNode) and len(item.entries) == 1:
            ((name, config),) = item.entries.items()
            plugins.append(_plugin(ctx, name, config.value))
        elif isinstance(item, MapNode) and not item.entries:
            raise ctx.error(
                "an item of 'plugins' is an empty mapping: name the plugin, "
                "e.g. `- docker#v5.8.0: {image: alpine}`",
                item.mark,
            )
        elif isinstance(item, MapNode):
            raise ctx.error(
                f"each item of 'plugins' must name one plugin, got {len(item.entries)} "
                f"({', '.join(item.entries)}); write one list item per plugin",
                item.mark,
            )
        else:
            raise ctx.error(
                f"each item of 'plugins' must be a plugin name or a mapping of one plugin to "
                f"its configuration, got {describe(item)}",
                item.mark,
            )
    return tuple(plugins)


def _plugin(ctx: Context, name: str, config: Node) -> Plugin:
    if not name.strip():
        raise ctx.error("a plugin name must not be empty", config.mark)
    data = plain(config)
    if data in (None, {}, []):
        data = None
    return Plugin(source=full_source(name), config=data)


def full_source(name: str) -> str:
    """The repository a plugin name stands for; applying it twice changes nothing."""
    if _LEFT_ALONE.match(name):
        return name
    location, hash_, version = name.partition("#")
    if ":" in location or location.count("/") >= 2:  # `my:plugin`, `host/org/repo`
        return name
    if "/" in location:
        org, _, repo = location.partition("/")
    else:
        org, repo = "buildkite-plugins", location
    if not repo.endswith("-buildkite-plugin"):
        repo += "-buildkite-plugin"
    return f"github.com/{org}/{repo}{hash_}{version}"
