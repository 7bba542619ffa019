"""`retry:` on command steps — automatic retries by exit status or signal reason.

retry:
  automatic: true                       # any failure, up to 2 more attempts
  automatic:                            # or one rule / a list of rules
    - exit_status: -1                   # an int, a list of ints, or "*"
      signal_reason: agent_lost         # or "*"; both must match when both are given
      limit: 2                          # 1..10, default 2
  manual: false                         # kept; manual retries are always allowed for now
"""

from __future__ import annotations

from dataclasses import dataclass

from conveyor.pipeline.context import Context
from conveyor.pipeline.loader import MapEntry, MapNode, ScalarNode, SeqNode, describe

DEFAULT_LIMIT = 2
MAX_LIMIT = 10


@dataclass(frozen=True)
class RetryRule:
    exit_status: tuple[int, ...] | None = None  # None: any
    signal_reason: str | None = None  # None: any
    limit: int = DEFAULT_LIMIT

    def matches(self, exit_status: int | None, signal_reason: str | None) -> bool:
        if exit_status == 0 and signal_reason is None:
            return False  # a passed job is never retried
        if self.exit_status is not None and exit_status not in self.exit_status:
            return False
        return self.signal_reason is None or self.signal_reason == signal_reason


def read_retry(ctx: Context, entry: MapEntry) -> tuple[RetryRule, ...]:
    node = entry.value
    if isinstance(node, ScalarNode) and node.value is None:
        return ()
    if not isinstance(node, MapNode):
        raise ctx.error(f"'retry' must be a mapping, got {describe(node)}", node.mark)
    rules: tuple[RetryRule, ...] = ()
    for name, item in node.entries.items():
        if name == "automatic":
            rules = _automatic(ctx, item.value)
        elif name == "manual":
            continue
        else:
            raise ctx.error(
                f"unknown key {name!r} in 'retry': expected 'automatic' or 'manual'",
                item.key_mark,
            )
    return rules


def _automatic(ctx: Context, node: MapNode | SeqNode | ScalarNode) -> tuple[RetryRule, ...]:
    if isinstance(node, ScalarNode) and isinstance(node.value, bool):
        return (RetryRule(),) if node.value else ()
    if isinstance(node, MapNode):
        return (_rule(ctx, node),)
    if isinstance(node, SeqNode):
        rules = []
        for item in node.items:
            if not isinstance(item, MapNode):
                raise ctx.error(
                    f"each automatic retry rule must be a mapping, got {describe(item)}", item.mark
                )
            rules.append(_rule(ctx, item))
        return tuple(rules)
    raise ctx.error(
        f"'automatic' must be true, false, a rule or a list of rules, got {describe(node)}",
        node.mark,
    )


def _rule(ctx: Context, node: MapNode) -> RetryRule:
    exit_status: tuple[int, ...] | None = None
    signal_reason: str | None = None
    limit = DEFAULT_LIMIT
    for name, entry in node.entries.items():
        value = entry.value
        if name == "exit_status":
            exit_status = _statuses(ctx, value)
        elif name == "signal_reason":
            if not (isinstance(value, ScalarNode) and isinstance(value.value, str)):
                raise ctx.error(
                    f"'signal_reason' must be a string, got {describe(value)}", value.mark
                )
            signal_reason = None if value.value == "*" else value.value
        elif name == "limit":
            if not (
                isinstance(value, ScalarNode)
                and isinstance(value.value, int)
                and not isinstance(value.value, bool)
                and 1 <= value.value <= MAX_LIMIT
            ):
                raise ctx.error(
                    f"'limit' must be a whole number from 1 to {MAX_LIMIT}, got {_shown(value)}",
                    value.mark,
                )
            limit = value.value
        elif name == "signal":
            continue  # accepted and kept by Buildkite; signal names are not matched here
        else:
            raise ctx.error(f"unknown key {name!r} in an automatic retry rule", entry.key_mark)
    return RetryRule(exit_status=exit_status, signal_reason=signal_reason, limit=limit)


def _statuses(ctx: Context, value: MapNode | SeqNode | ScalarNode) -> tuple[int, ...] | None:
    if isinstance(value, ScalarNode) and value.value == "*":
        return None
    items = value.items if isinstance(value, SeqNode) else (value,)
    statuses = []
    for item in items:
        if not (
            isinstance(item, ScalarNode)
            and isinstance(item.value, int)
            and not isinstance(item.value, bool)
        ):
            raise ctx.error(
                f"'exit_status' must be a number, a list of numbers, or \"*\", got {_shown(item)}",
                item.mark,
            )
        statuses.append(item.value)
    return tuple(statuses)


def _shown(node: MapNode | SeqNode | ScalarNode) -> str:
    if isinstance(node, ScalarNode) and node.value is not None:
        return repr(node.value)
    return describe(node)
