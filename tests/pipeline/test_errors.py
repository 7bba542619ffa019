"""Malformed pipelines: every failure is a PipelineError naming file, line, column and step.

Each case says where the error points (line and column of the offending node, 1-based), which
step it names (None: the problem is outside every step), and a fragment of the problem.
"""

from __future__ import annotations

import random
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor.errors import PipelineError
from conveyor.pipeline import check_graph, parse_pipeline


@dataclass(frozen=True)
class Bad:
    text: str
    line: int
    column: int
    step: str | None
    fragment: str
    env: Mapping[str, str] | None = None
    """Parse with these variables (interpolation on); None parses the text as written."""


S71 = "s" * 71
A101 = "a" * 101

CASES = {
    # --- YAML -----------------------------------------------------------------------------
    "yaml syntax: bad token": Bad("steps: %blah%\n", 1, 8, None, "cannot start any token"),
    "yaml syntax: lone brace": Bad("{", 1, 2, None, "invalid YAML"),
    "yaml syntax: tab indent": Bad("steps:\n  - command: x\n\tenv: {}\n", 3, 1, None, "'\\t'"),
    "yaml syntax: unclosed quote": Bad('steps:\n  - command: "echo\n', 3, 1, None, "quoted scalar"),
    "yaml: undefined alias": Bad("steps:\n  - *nope\n", 2, 5, None, "undefined alias 'nope'"),
    "yaml: duplicate mapping key": Bad(
        "steps:\n  - command: a\n    command: b\n", 3, 5, None, 'duplicate key "command"'
    ),
    "yaml: recursive alias": Bad("steps: []\nx: &x\n  y: [*x]\n", 2, 4, None, "contains it"),
    "yaml: step holding an alias to itself": Bad(
        "- &s\n  command: x\n  env: {X: *s}\n", 1, 3, None, "contains it"
    ),
    "yaml: merge of a scalar": Bad("steps:\n  - <<: 3\n    command: x\n", 2, 9, None, "merging"),
    "yaml: raw control character": Bad("steps:\n  - command: a\x80\n", 2, 15, None, "#x0080"),
    "yaml: complex mapping key": Bad(
        "steps: []\nenv:\n  ? [a, b]\n  : c\n", 3, 5, None, "mapping key must be a string"
    ),
    # --- document -------------------------------------------------------------------------
    "empty document": Bad("# nothing here\n", 1, 1, None, "the pipeline is empty"),
    "top level is a string": Bad("hello\n", 1, 1, None, "got a string"),
    "top level is a number": Bad("42\n", 1, 1, None, "got a number"),
    "steps is a mapping": Bad("env: {}\nsteps:\n  a: 1\n", 3, 3, None, "'steps' must be a list"),
    "steps is a string": Bad("steps: make\n", 1, 8, None, "'steps' must be a list"),
    "top-level env is a list": Bad("env: [a]\nsteps: []\n", 1, 6, None, "'env' must be a mapping"),
    "top-level env value is a mapping": Bad(
        "env:\n  A:\n    b: c\nsteps: []\n", 3, 5, None, "env value 'A' must be a string"
    ),
    "top-level agents item without =": Bad(
        "agents: [linux]\nsteps: []\n", 1, 10, None, "got 'linux'"
    ),
    # --- what kind of step ----------------------------------------------------------------
    "step is a number": Bad("steps:\n  - 42\n", 2, 5, "step 1", "step 1 must be a mapping"),
    "step is a list": Bad("- wait\n- [a]\n", 2, 3, "step 2", "step 2 must be a mapping"),
    "step is null": Bad("- wait\n- command: x\n-\n", 3, 2, "step 3", "got null"),
    "bare command string": Bad(
        "- wait\n- wait\n- echo hello\n", 3, 3, "step 3", "got 'echo hello' (to run it, write"
    ),
    "mapping of no kind": Bad("- llama: Kuzco\n", 1, 3, "step 1", "(found keys: llama)"),
    "empty mapping step": Bad("- {}\n", 1, 3, "step 1", "not a known step type"),
    "type not a string": Bad("- type: [wait]\n", 1, 9, "step 1", "'type' must be a string"),
    "type unknown": Bad("- type: mystery\n  label: M\n", 1, 9, "M", "step type 'mystery'"),
    "wait and command on one step": Bad(
        "- label: Both\n  command: make\n  wait: ~\n", 3, 3, "Both", "cannot have 'wait'"
    ),
    "block and command on one step": Bad(
        "- block: Go?\n  command: make\n", 1, 3, "Go?", "a command step cannot have 'block'"
    ),
    "type says wait but has a trigger": Bad(
        "- type: wait\n  key: w\n  trigger: deploy\n", 3, 3, "w", "cannot have 'trigger'"
    ),
    "script as a string": Bad(
        "- script: make test\n  label: S\n", 1, 11, "S", "'script' must be a mapping"
    ),
    # --- command steps --------------------------------------------------------------------
    "command is a number": Bad("- command: 42\n", 1, 12, "step 1", "got a number"),
    "command list holds a mapping": Bad(
        "- command:\n    - make\n    - {a: b}\n", 3, 7, "step 1", "line 2 of 'command'"
    ),
    "nested command holds a mapping": Bad(
        "- label: Build\n  command:\n    command: {run: make}\n", 3, 14, "Build", "got a mapping"
    ),
    "parallelism is a string": Bad(
        "- command: x\n  label: P\n  parallelism: '2'\n", 3, 16, "P", "whole number, got '2'"
    ),
    "parallelism is zero": Bad(
        "- command: x\n  key: p\n  parallelism: 0\n", 3, 16, "p", "from 1 to 1000, got 0"
    ),
    "parallelism too large": Bad("- command: x\n  parallelism: 1001\n", 2, 16, "step 1", "1001"),
    "priority is a float": Bad(
        "- command: x\n  priority: 1.5\n", 2, 13, "step 1", "'priority' must be a whole number"
    ),
    "timeout is a string": Bad(
        "- command: x\n  timeout_in_minutes: '5'\n", 2, 23, "step 1", "whole number, got '5'"
    ),
    "timeout is zero": Bad(
        "- command: x\n  timeout_in_minutes: 0\n", 2, 23, "step 1", "from 1 to 43200, got 0"
    ),
    "concurrency_method unknown": Bad(
        "- command: x\n  concurrency: 1\n  concurrency_group: g\n  concurrency_method: fifo\n",
        4,
        23,
        "step 1",
        "'concurrency_method' must be 'ordered' or 'eager'",
    ),
    "concurrency is zero": Bad(
        "- command: x\n  concurrency: 0\n  concurrency_group: g\n", 2, 16, "step 1", "at least 1"
    ),
    "soft_fail exit_status is a string": Bad(
        "- command: x\n  soft_fail:\n    - exit_status: '1'\n",
        3,
        20,
        "step 1",
        "'exit_status' in 'soft_fail' must be a number or \"*\", got '1'",
    ),
    "soft_fail is a word": Bad(
        "- command: x\n  soft_fail: sometimes\n", 2, 14, "step 1", "'soft_fail' must be true"
    ),
    "soft_fail item with another key": Bad(
        "- command: x\n  soft_fail: [{exit_status: 1, signal: x}]\n",
        2,
        15,
        "step 1",
        "with only 'exit_status'",
    ),
    "skip reason over 70 characters": Bad(
        f"- command: x\n  label: S\n  skip: {S71}\n", 3, 9, "S", "longer than 70 characters"
    ),
    "skip is a number": Bad("- command: x\n  skip: 1\n", 2, 9, "step 1", "got a number"),
    "cancel_on_build_failing is yes": Bad(
        "- command: x\n  cancel_on_build_failing: yes\n", 2, 28, "step 1", "true or false"
    ),
    "artifact_paths is a mapping": Bad(
        "- command: x\n  artifact_paths: {a: b}\n", 2, 19, "step 1", "or a list of strings"
    ),
    "matrix is a string": Bad(
        "- command: x\n  matrix: linux\n", 2, 11, "step 1", "'matrix' must be a list"
    ),
    # --- plugins --------------------------------------------------------------------------
    "plugins item with two keys": Bad(
        "- command: x\n  plugins:\n    - docker#v1: {}\n      cache#v1: {}\n",
        3,
        7,
        "step 1",
        "must name one plugin, got 2 (docker#v1, cache#v1)",
    ),
    "plugins item is an empty mapping": Bad(
        "- command: x\n  plugins: [{}]\n", 2, 13, "step 1", "is an empty mapping"
    ),
    "plugins is a string": Bad(
        "- command: x\n  plugins: docker#v1\n", 2, 12, "step 1", "'plugins' must be a list"
    ),
    "plugins item is a number": Bad(
        "- command: x\n  plugins: [3]\n", 2, 13, "step 1", "got a number"
    ),
    # --- retry ----------------------------------------------------------------------------
    "retry limit 11": Bad(
        "- command: x\n  label: R\n  retry:\n    automatic:\n      - exit_status: 1\n"
        "        limit: 11\n",
        6,
        16,
        "R",
        "'limit' must be a whole number from 0 to 10, got 11",
    ),
    "retry limit negative": Bad(
        "- command: x\n  retry: {automatic: {limit: -1}}\n", 2, 30, "step 1", "got -1"
    ),
    "retry unknown key": Bad(
        "- command: x\n  retry: {automatically: true}\n", 2, 11, "step 1", "'automatically'"
    ),
    "retry exit_status is a word": Bad(
        "- command: x\n  retry: {automatic: {exit_status: one}}\n", 2, 36, "step 1", "got 'one'"
    ),
    "retry rule unknown key": Bad(
        "- command: x\n  retry: {automatic: [{exit_status: 1, when: now}]}\n",
        2,
        40,
        "step 1",
        "unknown key 'when' in an automatic retry rule",
    ),
    "retry manual is a word": Bad(
        "- command: x\n  retry: {manual: never}\n", 2, 19, "step 1", "'manual' must be true"
    ),
    "retry manual reason is a number": Bad(
        "- command: x\n  retry: {manual: {allowed: false, reason: 5}}\n",
        2,
        44,
        "step 1",
        "'reason' in 'retry.manual' must be a string",
    ),
    "retry is a list": Bad(
        "- command: x\n  retry: [automatic]\n", 2, 10, "step 1", "'retry' must be a mapping"
    ),
    # --- matrix ---------------------------------------------------------------------------
    "matrix dimension with a dash": Bad(
        "- command: make\n  matrix:\n    setup:\n      a-b: [1, 2]\n",
        4,
        7,
        "step 1",
        "dimension name 'a-b' may contain only letters, digits and _",
    ),
    "matrix adjustment with an unknown dimension": Bad(
        "- command: echo {{matrix.os}}\n  matrix:\n    setup:\n      os: [linux]\n"
        "    adjustments:\n      - with: {arch: arm}\n",
        6,
        16,
        "step 1",
        "unknown matrix dimension 'arch' in 'with'",
    ),
    "matrix unknown token": Bad(
        "- label: 'test {{matrix.x}}'\n  command: make\n  matrix:\n    setup:\n      os: [a]\n",
        1,
        10,
        "test {{matrix.x}}",
        "unknown matrix dimension 'x' in {{matrix.x}}",
    ),
    "matrix unnamed token in a named matrix": Bad(
        "- command: echo {{matrix}}\n  matrix:\n    setup: {os: [a]}\n",
        1,
        12,
        "step 1",
        "{{matrix}} does not fit this matrix",
    ),
    # --- if -------------------------------------------------------------------------------
    "if syntax error": Bad(
        "- command: x\n  label: C\n  if: build.branch == \n",
        3,
        7,
        "C",
        "bad 'if' expression: column 16: expected a value",
    ),
    "if unknown variable": Bad(
        "- command: x\n  if: build.nope == 'x'\n",
        2,
        7,
        "step 1",
        "unknown variable 'build.nope'",
    ),
    "if unclosed parenthesis": Bad(
        "- wait: ~\n  if: (build.branch == 'main'\n", 2, 7, "step 1", "'(' is never closed"
    ),
    "if is a boolean": Bad("- command: x\n  if: true\n", 2, 7, "step 1", "'if' must be a string"),
    # --- fields every step has ------------------------------------------------------------
    "depends_on is a number": Bad(
        "- command: x\n  depends_on: 3\n", 2, 15, "step 1", "'depends_on' must be a step key"
    ),
    "depends_on is a mapping": Bad(
        "- command: x\n  depends_on: {a: b}\n", 2, 15, "step 1", "got a mapping"
    ),
    "depends_on item is a number": Bad(
        "- command: x\n  depends_on:\n    - a\n    - 7\n", 4, 7, "step 1", "each item of"
    ),
    "depends_on item is empty": Bad(
        "- command: x\n  depends_on: [a, '']\n", 2, 19, "step 1", "step key, got ''"
    ),
    "depends_on step is not a string": Bad(
        "- command: x\n  depends_on: [{step: [a]}]\n", 2, 23, "step 1", "'step' in 'depends_on'"
    ),
    "depends_on item with an unknown key": Bad(
        "- command: x\n  depends_on: [{step: a, soft: true}]\n", 2, 26, "step 1", "'soft'"
    ),
    "depends_on allow_failure is yes": Bad(
        "- command: x\n  depends_on: [{step: a, allow_failure: yes}]\n",
        2,
        41,
        "step 1",
        "'allow_failure' must be true or false",
    ),
    "env is a list": Bad(
        "- command: x\n  env:\n    - A=1\n", 3, 5, "step 1", "'env' must be a mapping"
    ),
    "env is a string": Bad("- command: x\n  env: A=1\n", 2, 8, "step 1", "got a string"),
    "env value is a mapping": Bad(
        "- command: x\n  label: L\n  env:\n    A: {b: c}\n", 4, 8, "L", "env value 'A'"
    ),
    "env value is a list": Bad(
        "- command: x\n  env:\n    A: ok\n    B: [1, 2]\n", 4, 8, "step 1", "env value 'B'"
    ),
    "agents item without =": Bad(
        "- command: x\n  agents: [queue]\n", 2, 12, "step 1", 'string like "queue=linux"'
    ),
    "agents item starting with =": Bad(
        "- command: x\n  agents: ['=linux']\n", 2, 12, "step 1", "got '=linux'"
    ),
    "agents is a number": Bad(
        "- command: x\n  agents: 3\n", 2, 11, "step 1", "'agents' must be a mapping"
    ),
    "key is a number": Bad("- command: x\n  key: 42\n", 2, 8, "step 1", "'key' must be a string"),
    "key has spaces": Bad(
        "- command: x\n  key: has spaces\n", 2, 8, "has spaces", "may contain only letters"
    ),
    "key is a UUID": Bad(
        "- command: x\n  key: 123E4567-e89b-12d3-a456-426614174000\n",
        2,
        8,
        "123E4567-e89b-12d3-a456-426614174000",
        "must not look like a UUID",
    ),
    "key of 101 characters": Bad(
        f"- command: x\n  key: {A101}\n", 2, 8, A101, "'key' is longer than 100 characters"
    ),
    "key is empty": Bad("- command: x\n  label: L\n  key: ''\n", 3, 8, "L", "must not be empty"),
    "id has a quote": Bad('- wait: ~\n  id: "it\'s"\n', 2, 7, "it's", "'id' \"it's\" may"),
    "wait key is bad": Bad("- wait\n- wait: ~\n  key: a b\n", 3, 8, "a b", "may contain only"),
    "label is a number": Bad(
        "- command: x\n  label: 5\n  key: k\n", 2, 10, "k", "'label' must be a string"
    ),
    "name is a list": Bad("- command: x\n  name: [a]\n", 2, 9, "step 1", "'name' must be"),
    "branches holds a number": Bad(
        "- command: x\n  branches: [main, 3]\n", 2, 20, "step 1", "'branches' must be"
    ),
    "allow_dependency_failure is a number": Bad(
        "- command: x\n  allow_dependency_failure: 1\n", 2, 29, "step 1", "true or false"
    ),
    # --- wait steps -----------------------------------------------------------------------
    "continue_on_failure is a quoted yes": Bad(
        "- wait: ~\n  continue_on_failure: 'yes'\n", 2, 24, "step 1", "must be true or false"
    ),
    "continue_on_failure is yes": Bad(
        "- wait: ~\n  continue_on_failure: yes\n", 2, 24, "step 1", "got a string"
    ),
    "wait is a number": Bad("- wait: 5\n", 1, 9, "step 1", "'wait' must be null, a label"),
    # --- block and input steps ------------------------------------------------------------
    "block field without key": Bad(
        "- block: Release\n  fields:\n    - text: Version\n", 3, 7, "Release", "has no 'key'"
    ),
    "block select without options": Bad(
        "- block: Release\n  fields:\n    - select: Stream\n      key: stream\n",
        3,
        7,
        "Release",
        "a select field needs a non-empty list of 'options'",
    ),
    "block select with empty options": Bad(
        "- block: R\n  fields:\n    - select: S\n      key: s\n      options: []\n",
        3,
        7,
        "R",
        "non-empty list of 'options'",
    ),
    "block default not in options": Bad(
        "- block: Release\n  fields:\n    - select: Stream\n      key: stream\n"
        "      default: nightly\n      options:\n        - {label: Beta, value: beta}\n",
        5,
        16,
        "Release",
        "default 'nightly' is not one of the options ('beta')",
    ),
    "input multiple default not in options": Bad(
        "- input: Ask\n  fields:\n    - select: R\n      key: r\n      multiple: true\n"
        "      default: [eu, mars]\n      options:\n        - {label: EU, value: eu}\n",
        6,
        16,
        "Ask",
        "default 'mars' is not one of the options",
    ),
    "block default list without multiple": Bad(
        "- block: B\n  fields:\n    - select: S\n      key: s\n      default: [a]\n"
        "      options: [{label: A, value: a}]\n",
        5,
        16,
        "B",
        "a list only for a field with 'multiple: true'",
    ),
    "block bad blocked_state": Bad(
        "- block: Deploy?\n  blocked_state: paused\n",
        2,
        18,
        "Deploy?",
        "'blocked_state' must be one of passed, failed, running, got 'paused'",
    ),
    "block fields is a mapping": Bad(
        "- block: B\n  fields: {text: x}\n", 2, 11, "B", "'fields' must be a list"
    ),
    "block field is a string": Bad(
        "- block: B\n  fields: [version]\n", 2, 12, "B", "each field must be a mapping"
    ),
    "block field key has a space": Bad(
        "- block: B\n  fields:\n    - text: T\n      key: my key\n", 4, 12, "B", "'my key'"
    ),
    "block field format is not a regular expression": Bad(
        "- block: B\n  fields:\n    - text: T\n      key: t\n      format: '[a-'\n",
        5,
        15,
        "B",
        "'format' is not a valid regular expression",
    ),
    "block field is both text and select": Bad(
        "- block: B\n  fields:\n    - text: T\n      select: S\n      key: t\n",
        4,
        7,
        "B",
        "either 'text' or 'select'",
    ),
    "block option without value": Bad(
        "- block: B\n  fields:\n    - select: S\n      key: s\n"
        "      options:\n        - label: A\n",
        6,
        11,
        "B",
        "each option must be a mapping with 'label' and 'value'",
    ),
    "block prompt is a list": Bad("- block: B\n  prompt: [a]\n", 2, 11, "B", "'prompt' must be"),
    # --- trigger steps --------------------------------------------------------------------
    "trigger without slug": Bad(
        "- type: trigger\n  label: Deploy\n", 1, 3, "Deploy", "has no 'trigger'"
    ),
    "trigger with an empty slug": Bad("- trigger: ''\n", 1, 12, "step 1", "has no 'trigger'"),
    "trigger slug is a number": Bad("- trigger: 5\n", 1, 12, "step 1", "'trigger' must be"),
    "trigger build is not a mapping": Bad(
        "- trigger: deploy\n  build: [main]\n", 2, 10, "step 1", "'build' must be a mapping"
    ),
    "trigger build env is a list": Bad(
        "- trigger: deploy\n  build:\n    env: [A=1]\n", 3, 10, "step 1", "'env' must be"
    ),
    "trigger async is a word": Bad(
        "- trigger: deploy\n  async: maybe\n", 2, 10, "step 1", "'async' must be true or false"
    ),
    # --- group steps ----------------------------------------------------------------------
    "group nested in a group": Bad(
        "- group: Outer\n  steps:\n    - command: a\n    - group: Inner\n      steps: [wait]\n",
        4,
        7,
        "Inner",
        "a group cannot contain another group",
    ),
    "group without steps": Bad("- group: Tests\n  key: t\n", 1, 3, "Tests", "has no 'steps'"),
    "group steps is a string": Bad(
        "- group: Tests\n  steps: make\n", 2, 10, "Tests", "'steps' of a group must be a list"
    ),
    "group with a bad step inside": Bad(
        "- group: Tests\n  steps:\n    - command: x\n    - echo hi\n",
        4,
        7,
        "Tests / step 2",
        "step 2 is not a known step type",
    ),
    "group name is a list": Bad("- group: [a]\n  steps: []\n", 1, 10, "step 1", "'group' must"),
    # --- interpolation (env given: variables are expanded first) --------------------------
    "interpolation: required variable unset": Bad(
        "- label: Deploy\n  command: echo ${X:?must be set}\n",
        2,
        12,
        "Deploy",
        "$X: must be set",
        env={},
    ),
    "interpolation: required variable empty": Bad(
        "- command: echo ${X:?must be set}\n", 1, 12, "step 1", "$X: must be set", env={"X": ""}
    ),
    "interpolation: unset without message": Bad(
        "- wait\n- trigger: ${SLUG?}\n", 2, 12, "step 2", "$SLUG: not set", env={}
    ),
    "interpolation: in a group": Bad(
        "- group: G\n  steps:\n    - command: ok\n    - command: echo ${X:?}\n",
        4,
        16,
        "G / step 2",
        "$X: ",
        env={},
    ),
    "interpolation: in the pipeline env": Bad(
        "env:\n  A: ${X:?needed}\nsteps: [wait]\n", 2, 6, None, "$X: needed", env={}
    ),
    "interpolation: unterminated": Bad(
        "- command: echo ${X\n", 1, 12, "step 1", "unterminated expansion '${X'", env={}
    ),
    "interpolation: expands to a bad key": Bad(
        # Checked after expansion, so the message shows (and names the step by) the value.
        "- command: x\n  key: ${K}\n",
        2,
        8,
        "a b",
        "'key' 'a b' may",
        env={"K": "a b"},
    ),
}


def test_there_are_plenty_of_cases() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_malformed_pipeline(case: Bad) -> None:
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(case.text, filename="bad.yml", env=case.env)
    error = caught.value
    assert case.fragment in error.problem
    assert (error.file, error.line, error.column) == ("bad.yml", case.line, case.column)
    assert error.step == case.step
    where = f" in step {case.step!r}" if case.step is not None else ""
    assert str(error) == f"bad.yml:{case.line}:{case.column}: {error.problem}{where}"


# --- checks across steps (check_graph): file and line, no column ------------------------------


@dataclass(frozen=True)
class BadGraph:
    text: str
    line: int
    step: str
    fragment: str


GRAPH_CASES = {
    "duplicate step keys": BadGraph(
        "steps:\n  - command: a\n    key: build\n  - wait\n  - command: b\n    key: build\n",
        5,
        "b",
        "key 'build' is already used by the step on line 2",
    ),
    "duplicate key via alias spellings": BadGraph(
        "- wait: ~\n  id: w\n- command: x\n  identifier: w\n", 3, "x", "on line 1"
    ),
    "duplicate key inside a group": BadGraph(
        "- group: G\n  key: g\n  steps:\n    - label: Inner\n      command: x\n      key: g\n",
        4,
        "Inner",
        "key 'g' is already used by the step on line 1",
    ),
    "unknown depends_on": BadGraph(
        "- command: a\n  key: a\n- label: B\n  command: b\n  depends_on: [a, nope]\n",
        3,
        "B",
        "depends_on names 'nope', but no step has that key",
    ),
    "unknown depends_on of a group": BadGraph(
        "- group: Tests\n  depends_on: [{step: build, allow_failure: true}]\n  steps: [wait]\n",
        1,
        "Tests",
        "depends_on names 'build'",
    ),
}


@pytest.mark.parametrize("case", GRAPH_CASES.values(), ids=GRAPH_CASES.keys())
def test_graph_errors(case: BadGraph) -> None:
    pipeline = parse_pipeline(case.text, filename="bad.yml")  # one step at a time: fine
    with pytest.raises(PipelineError) as caught:
        check_graph(pipeline, filename="bad.yml")
    error = caught.value
    assert case.fragment in error.problem
    assert (error.file, error.line, error.column, error.step) == (
        "bad.yml",
        case.line,
        None,
        case.step,
    )
    assert str(error) == f"bad.yml:{case.line}: {error.problem} in step {case.step!r}"


# --- accepted, with a warning that names file, line, column and step ----------------------------


WARNED = {
    "command is empty": ("- command: ''\n", "1:3", "step 1", "has no command"),
    "command is a blank block": ("- commands: |\n    \n  key: k\n", "1:3", "k", "has no command"),
    "command is null": ("- command:\n  label: L\n", "1:3", "L", "has no command"),
    "command is an empty list": ("- command: []\n", "1:3", "step 1", "has no command"),
    "type script and nothing else": ("- type: script\n", "1:3", "step 1", "has no command"),
    "concurrency without a group": (
        "- command: x\n  concurrency: 2\n",
        "2:3",
        "step 1",
        "'concurrency' has no effect without 'concurrency_group'",
    ),
    "unknown key in a group's step": (
        "- group: G\n  steps:\n    - wait: ~\n      foo: 1\n",
        "4:7",
        "G / step 1",
        "unknown or not yet supported key 'foo' (kept, but ignored)",
    ),
    "unknown key in a field": (
        "- block: B\n  fields:\n    - {text: T, key: t, options: []}\n",
        "3:25",
        "B",
        "unknown key 'options' in a field (ignored)",
    ),
    "unknown key in a trigger build": (
        "- trigger: t\n  build: {branch: main, pipeline: x}\n",
        "2:25",
        "step 1",
        "unknown key 'pipeline' in 'build' (ignored)",
    ),
    "two fields share a key": (
        "- block: B\n  fields:\n    - {text: A, key: k}\n    - {text: C, key: k}\n",
        "4:7",
        "B",
        "two fields have the key 'k'",
    ),
    "label and name": ("- command: x\n  label: L\n  name: N\n", "3:3", "L", "'name' is ignored"),
    "if_changed": ("- command: x\n  if_changed: a/**\n", "2:3", "step 1", "'if_changed' is kept"),
    "blocked_state on an input step": (
        "- input: Who?\n  blocked_state: failed\n",
        "2:3",
        "Who?",
        "'blocked_state' has no effect on an input step",
    ),
}


@pytest.mark.parametrize(("text", "where", "step", "fragment"), WARNED.values(), ids=WARNED.keys())
def test_accepted_with_a_warning(text: str, where: str, step: str, fragment: str) -> None:
    pipeline = parse_pipeline(text, filename="w.yml")
    (warning,) = pipeline.warnings
    assert warning.startswith(f"w.yml:{where}: ")
    assert fragment in warning
    assert warning.endswith(f" in step {step!r}")


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


def test_mangled_conformance_fixtures_raise_only_pipeline_errors() -> None:
    """Random edits of every vendored fixture (which cover every step kind) either parse or
    raise PipelineError, with and without interpolation: no parser bug escapes as another
    exception or as an "internal error"."""
    rng = random.Random(4321)
    alphabet = "-:[]{}&*|'\"#%\t\n x$~0"
    folder = Path(__file__).parent / "conformance" / "valid-pipelines"
    outcomes = {"ok": 0, "error": 0}
    for path in sorted(folder.glob("*.yml")):
        original = path.read_text(encoding="utf-8")
        for attempt in range(30):
            chars = list(original)
            for _ in range(rng.randint(1, 3)):
                chars[rng.randrange(len(chars))] = rng.choice(alphabet)
            text = "".join(chars)
            try:
                parse_pipeline(text, env={} if attempt % 2 else None)
                outcomes["ok"] += 1
            except PipelineError as exc:
                assert "internal error" not in exc.problem, (path.name, text, exc)
                outcomes["error"] += 1
    assert outcomes["ok"] > 0
    assert outcomes["error"] > 0
