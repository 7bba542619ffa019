"""`retry:` on command steps — automatic retries by exit status or signal reason.

retry:
  automatic: true                       # any failure, up to 2 more attempts
  automatic:                            # or one rule / a list of rules
    - exit_status: -1                   # an int, a list of ints, or "*"
      signal_reason: agent_lost         # or "*"; both must match when both are given
      limit: 2                          # 0..10, default 2 (0: this failure is not retried)
  manual: false                         # or {allowed: false, reason: "...", permit_on_passed: true}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from conveyor.pipeline.context import Context
from conveyor.pipeline.loader import MapEntry, MapNode, ScalarNode, SeqNode, describe

if TYPE_CHECKING:
    from conveyor.pipeline.steps import ManualRetry

DEFAULT_LIMIT = 2
MAX_LIMIT = 10
_BOOL_TEXT = {"true": True, "false": False}
"""Quoted booleans, which Buildkite's schema accepts for `automatic`, `manual` and their flags."""


@dataclass(frozen=True)
class RetryRule:
    exit_status: tuple[int, ...] | None = None  # None: any
    signal_reason: str | None = None  # None: any
    limit: int = DEFAULT_LIMIT
    signal: str | None = None  # None: any; else a name such as "SIGKILL"

    def matches(
        self, exit_status: int | None, signal_reason: str | None, signal: str | None = None
    ) -> bool:
        if exit_status == 0 and signal_reason is None:
            return False  # a passed job is never retried
        if self.exit_status is not None and exit_status not in self.exit_status:
            return False
        if self.signal is not None and _signal_name(signal or "") != self.signal:
            return False
        return self.signal_reason is None or self.signal_reason == signal_reason


def _signal_name(text: str) -> str:
    """ "kill", "KILL" and "SIGKILL" all mean SIGKILL."""
    text = text.strip().upper()
    return text if text.startswith("SIG") or not text else "SIG" + text


def read_retry(ctx: Context, entry: MapEntry) -> tuple[tuple[RetryRule, ...], ManualRetry | None]:
    """The automatic rules, and the manual retry settings when given."""
    node = entry.value
    if isinstance(node, ScalarNode) and node.value is None:
        return (), None
    if not isinstance(node, MapNode):
        raise ctx.error(f"'retry' must be a mapping, got {describe(node)}", node.mark)
    rules: tuple[RetryRule, ...] = ()
    manual: ManualRetry | None = None
    for name, item in node.entries.items():
        if name == "automatic":
            rules = _automatic(ctx, item.value)
        elif name == "manual":
            manual = _manual(ctx, item.value)
        else:
            raise ctx.error(
                f"unknown key {name!r} in 'retry': expected 'automatic' or 'manual'",
                item.key_mark,
            )
    return rules, manual


def _manual(ctx: Context, node: MapNode | SeqNode | ScalarNode) -> ManualRetry:
    from conveyor.pipeline.steps import ManualRetry  # steps imports this module

    if isinstance(node, ScalarNode) and isinstance(node.value, bool | None):
        return ManualRetry(allowed=node.value is not False)
    if isinstance(node, ScalarNode) and isinstance(node.value, str) and node.value in _BOOL_TEXT:
        return ManualRetry(allowed=_BOOL_TEXT[node.value])
    if not isinstance(node, MapNode):
        raise ctx.error(
            f"'manual' must be true, false or a mapping, got {describe(node)}", node.mark
        )
    allowed, permit, reason = True, False, None
    for name, entry in node.entries.items():
        value = entry.value.value if isinstance(entry.value, ScalarNode) else entry.value
        if name in ("allowed", "permit_on_passed") and isinstance(value, str):
            value = _BOOL_TEXT.get(value, value)
        if name in ("allowed", "permit_on_passed") and isinstance(value, bool):
            if name == "allowed":
                allowed = value
            else:
                permit = value
        elif name == "reason" and isinstance(value, str):
            reason = value
        elif name in ("allowed", "permit_on_passed", "reason"):
            kind = "a string" if name == "reason" else "true or false"
            raise ctx.error(
                f"{name!r} in 'retry.manual' must be {kind}, got {describe(entry.value)}",
                entry.value.mark,
            )
        else:
            raise ctx.error(
                f"unknown key {name!r} in 'retry.manual': expected allowed, "
                "permit_on_passed or reason",
                entry.key_mark,
            )
    return ManualRetry(allowed=allowed, permit_on_passed=permit, reason=reason)


def _automatic(ctx: Context, node: MapNode | SeqNode | ScalarNode) -> tuple[RetryRule, ...]:
    if isinstance(node, ScalarNode) and isinstance(node.value, str) and node.value in _BOOL_TEXT:
        node = ScalarNode(_BOOL_TEXT[node.value], node.mark)
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
    signal: str | None = None
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
                and 0 <= value.value <= MAX_LIMIT
            ):
                # 0 is allowed (as in the schema): a rule that matches and does not retry, which
                # shields a failure from a broader rule after it.
                raise ctx.error(
                    f"'limit' must be a whole number from 0 to {MAX_LIMIT}, got {_shown(value)}",
                    value.mark,
                )
            limit = value.value
        elif name == "signal":
            if not (isinstance(value, ScalarNode) and isinstance(value.value, str)):
                raise ctx.error(f"'signal' must be a string, got {describe(value)}", value.mark)
            signal = None if value.value == "*" else _signal_name(value.value)
        else:
            raise ctx.error(f"unknown key {name!r} in an automatic retry rule", entry.key_mark)
    return RetryRule(
        exit_status=exit_status, signal_reason=signal_reason, limit=limit, signal=signal
    )


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
