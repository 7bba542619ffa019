"""Malformed pipelines: every failure is a PipelineError naming file, line, column and step."""

from __future__ import annotations

import random
import textwrap
from dataclasses import dataclass

import pytest

from conveyor.errors import PipelineError
from conveyor.pipeline import parse_pipeline


@dataclass(frozen=True)
class Bad:
    text: str
    line: int
    column: int
    fragment: str
    step: str | None = None


CASES = {
    "yaml syntax: bad token": Bad("steps: %blah%\n", 1, 8, "cannot start any token"),
    "yaml syntax: lone brace": Bad("{", 1, 2, "invalid YAML"),
    "yaml syntax: tab indent": Bad("steps:\n  - command: x\n\tenv: {}\n", 3, 1, "invalid YAML"),
    "yaml syntax: unclosed quote": Bad('steps:\n  - command: "echo\n', 3, 1, "invalid YAML"),
    "yaml: undefined alias": Bad("steps:\n  - *nope\n", 2, 5, "undefined alias"),
    "yaml: duplicate mapping key": Bad(
        "steps:\n  - command: a\n    command: b\n", 3, 5, 'duplicate key "command"'
    ),
    "yaml: recursive alias": Bad("steps: []\nx: &x\n  y: [*x]\n", 2, 4, "contains it"),
    "yaml: step holding an alias to itself": Bad(
        "- &s\n  command: x\n  env: {X: *s}\n", 1, 3, "contains it"
    ),
    "yaml: merge of a scalar": Bad("steps:\n  - <<: 3\n    command: x\n", 2, 9, "merging"),
    "yaml: raw control character": Bad("steps:\n  - command: a\x80\n", 2, 15, "#x0080"),
    "yaml: complex mapping key": Bad("steps: []\nenv:\n  ? [a, b]\n  : c\n", 3, 5, "mapping key"),
    "empty document": Bad("# nothing here\n", 1, 1, "the pipeline is empty"),
    "top level is a string": Bad("hello\n", 1, 1, "got a string"),
    "top level is a number": Bad("42\n", 1, 1, "got a number"),
    "steps is a mapping": Bad("env: {}\nsteps:\n  a: 1\n", 3, 3, "'steps' must be a list"),
    "steps is a string": Bad("steps: make\n", 1, 8, "'steps' must be a list"),
    "step is a number": Bad("steps:\n  - 42\n", 2, 5, "step 1 must be a mapping", "step 1"),
    "step is a list": Bad("- wait\n- [a]\n", 2, 3, "step 2 must be a mapping", "step 2"),
    "step is null": Bad("- wait\n- command: x\n-\n", 3, 2, "got null", "step 3"),
    "bare command string": Bad(
        "- wait\n- wait\n- echo hello\n", 3, 3, "step 3 is not a known step type", "step 3"
    ),
    "mapping of no kind": Bad(
        "- llama: Kuzco\n", 1, 3, "not a known step type: expected one of the keys", "step 1"
    ),
    "empty mapping step": Bad("- {}\n", 1, 3, "found keys: none", "step 1"),
    "type not a string": Bad("- type: [wait]\n", 1, 9, "'type' must be a string", "step 1"),
    "type unknown": Bad("- type: mystery\n", 1, 9, "step type 'mystery' is not known", "step 1"),
    "block string": Bad("- wait\n- block\n", 2, 3, "block steps are not supported yet", "step 2"),
    "block mapping": Bad(
        "- block: Release?\n  key: rel\n", 1, 3, "block steps are not supported yet", "rel"
    ),
    "input by type": Bad(
        "- type: input\n  label: Ask\n", 1, 9, "input steps are not supported yet", "Ask"
    ),
    "manual string": Bad("- manual\n", 1, 3, "manual steps are not supported yet", "step 1"),
    "trigger": Bad(
        "- command: x\n- trigger: deploy\n", 2, 3, "trigger steps are not supported yet", "step 2"
    ),
    "group": Bad(
        "- group: Tests\n  steps: []\n", 1, 3, "group steps are not supported yet", "step 1"
    ),
    "command is a mapping": Bad(
        "- label: Build\n  command:\n    run: make\n", 3, 5, "must be a string or a list", "Build"
    ),
    "command is a number": Bad("- command: 42\n", 1, 12, "got a number", "step 1"),
    "command list holds a mapping": Bad(
        "- command:\n    - make\n    - {a: b}\n", 3, 7, "line 2 of 'command'", "step 1"
    ),
    "command is empty": Bad("- command: ''\n", 1, 12, "'command' is empty", "step 1"),
    "command is blank block": Bad("- commands: |\n    \n  key: k\n", 1, 13, "is empty", "k"),
    "command is null": Bad("- command:\n  label: L\n", 1, 3, "'command' is empty", "L"),
    "command is an empty list": Bad("- command: []\n", 1, 12, "'command' is empty", "step 1"),
    "plugins only": Bad(
        "- plugins: [docker#v5]\n", 1, 3, "plugins are not supported yet", "step 1"
    ),
    "type command without command": Bad("- type: script\n", 1, 3, "has no 'command'", "step 1"),
    "duplicate step keys": Bad(
        "steps:\n  - command: a\n    key: build\n  - wait\n  - command: b\n    key: build\n",
        6,
        10,
        "key 'build' is already used by the step on line 2",
        "build",
    ),
    "duplicate key via alias spelling": Bad(
        "- wait: ~\n  id: w\n- command: x\n  identifier: w\n", 4, 15, "on line 1", "w"
    ),
    "env is a list": Bad(
        "- command: x\n  env:\n    - A=1\n", 3, 5, "'env' must be a mapping", "step 1"
    ),
    "env is a string": Bad("- command: x\n  env: A=1\n", 2, 8, "'env' must be a mapping"),
    "env value is a mapping": Bad(
        "- command: x\n  label: L\n  env:\n    A: {b: c}\n", 4, 8, "env value 'A'", "L"
    ),
    "env value is a list": Bad(
        "- command: x\n  env:\n    A: ok\n    B: [1, 2]\n", 4, 8, "got a list", "step 1"
    ),
    "top-level env is a list": Bad("env: [a]\nsteps: []\n", 1, 6, "'env' must be a mapping"),
    "top-level env value is a mapping": Bad(
        "env:\n  A:\n    b: c\nsteps: []\n", 3, 5, "env value 'A' must be a string"
    ),
    "agents item without =": Bad(
        "- command: x\n  agents: [queue]\n", 2, 12, 'string like "queue=linux"', "step 1"
    ),
    "agents is a number": Bad(
        "- command: x\n  agents: 3\n", 2, 11, "'agents' must be a mapping", "step 1"
    ),
    "depends_on is a number": Bad(
        "- command: x\n  depends_on: 3\n", 2, 15, "'depends_on' must be a step key", "step 1"
    ),
    "depends_on is a mapping": Bad(
        "- command: x\n  depends_on: {a: b}\n", 2, 15, "got a mapping", "step 1"
    ),
    "depends_on item is a number": Bad(
        "- command: x\n  depends_on:\n    - a\n    - 7\n", 4, 7, "each item of 'depends_on'"
    ),
    "depends_on item is empty": Bad(
        "- command: x\n  depends_on: [a, '']\n", 2, 19, "each item of 'depends_on'"
    ),
    "depends_on step is not a string": Bad(
        "- command: x\n  depends_on: [{step: [a]}]\n", 2, 23, "'step' in 'depends_on'"
    ),
    "key is a number": Bad("- command: x\n  key: 42\n", 2, 8, "'key' must be a string", "step 1"),
    "key has a space": Bad(
        "- command: x\n  key: has spaces\n", 2, 8, "may contain only", "has spaces"
    ),
    "key has interpolation": Bad("- command: x\n  id: ${X}\n", 2, 7, "'id' '${X}' may contain"),
    "key is a UUID": Bad(
        "- command: x\n  key: 123E4567-e89b-12d3-a456-426614174000\n", 2, 8, "look like a UUID"
    ),
    "key is too long": Bad("- command: x\n  key: " + "a" * 101 + "\n", 2, 8, "longer than 100"),
    "key is empty": Bad("- command: x\n  label: L\n  key: ''\n", 3, 8, "must not be empty", "L"),
    "label is a number": Bad(
        "- command: x\n  label: 5\n  key: k\n", 2, 10, "'label' must be a string", "k"
    ),
    "name is a list": Bad("- command: x\n  name: [a]\n", 2, 9, "'name' must be a string"),
    "continue_on_failure is a string": Bad(
        "- wait: ~\n  continue_on_failure: 'yes'\n", 2, 24, "must be true or false", "step 1"
    ),
    "continue_on_failure is yes": Bad(
        "- wait: ~\n  continue_on_failure: yes\n", 2, 24, "got a string", "step 1"
    ),
    "wait is a number": Bad("- wait: 5\n", 1, 9, "'wait' must be null, a label", "step 1"),
    "wait key is bad": Bad("- wait\n- wait: ~\n  key: a b\n", 3, 8, "may contain only", "a b"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_malformed_pipeline(case: Bad) -> None:
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(case.text, filename="bad.yml")
    error = caught.value
    assert case.fragment in error.problem
    assert (error.file, error.line, error.column) == ("bad.yml", case.line, case.column)
    if case.step is not None:
        assert error.step == case.step
    assert str(error).startswith(f"bad.yml:{case.line}:{case.column}: ")


def test_error_message_names_the_step() -> None:
    text = "steps:\n  - label: Unit tests\n    command: make\n    env: [A]\n"
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(text, filename=".buildkite/pipeline.yml")
    assert str(caught.value) == (
        ".buildkite/pipeline.yml:4:10: 'env' must be a mapping of names to values, got a list "
        "in step 'Unit tests'"
    )


def test_top_level_errors_name_no_step() -> None:
    with pytest.raises(PipelineError) as caught:
        parse_pipeline("steps: 3\n")
    assert caught.value.step is None
    assert str(caught.value) == "<pipeline>:1:8: 'steps' must be a list of steps, got a number"


def test_a_bug_still_surfaces_as_pipeline_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(text: str, *, filename: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("conveyor.pipeline.parse.load_yaml", broken)
    with pytest.raises(PipelineError) as caught:
        parse_pipeline("- wait\n", filename="x.yml")
    assert caught.value.file == "x.yml"
    assert "internal error: RuntimeError('boom')" in caught.value.problem
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_default_filename() -> None:
    with pytest.raises(PipelineError) as caught:
        parse_pipeline("- 1\n")
    assert caught.value.file == "<pipeline>"


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 9):
        refs = ", ".join([f"*a{n - 1}"] * 10)
        lines.append(f"a{n}: &a{n} [{refs}]")
    with pytest.raises(PipelineError) as caught:
        parse_pipeline("steps: []\n" + "\n".join(lines) + "\n")
    assert "more than 1000000 values" in caught.value.problem
    assert caught.value.line == 1


def test_deep_nesting_is_refused() -> None:
    text = "steps: []\nx: " + "[" * 500 + "]" * 500 + "\n"
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(text)
    assert caught.value.line == 2
    assert "depth" in caught.value.problem


VALID = textwrap.dedent(
    """\
    env:
      A: "1"
    base: &base
      agents: {queue: q}
    steps:
      - <<: *base
        label: ":hammer: Build"
        key: build
        command:
          - make
          - make install
        depends_on: [x]
      - wait: ~
        continue_on_failure: true
      - {"commands": "echo json", "env": {"B": 2}}
      - command: |
          echo "block"
        soft_fail: [{exit_status: 1}]
    """
)


def test_no_other_exception_escapes_from_truncated_or_mangled_input() -> None:
    """Every prefix, and random byte edits, either parse or raise PipelineError."""
    rng = random.Random(1234)
    texts = [VALID[:n] for n in range(len(VALID) + 1)]
    alphabet = "-:[]{}&*<>!|'\"#%@`,?\t\n x\\\x00\x85\u2028\ufeff"
    for _ in range(250):
        chars = list(VALID)
        for _ in range(rng.randint(1, 4)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        texts.append("".join(chars))
    outcomes = {"ok": 0, "error": 0}
    for text in texts:
        try:
            parse_pipeline(text)
            outcomes["ok"] += 1
        except PipelineError as exc:
            assert "internal error" not in exc.problem, (text, exc)
            outcomes["error"] += 1
    assert outcomes["ok"] > 0
    assert outcomes["error"] > 0
