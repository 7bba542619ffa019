"""Our parser against Buildkite's pipeline JSON Schema and its fixtures (vendored under
`conformance/`, see PROVENANCE.md there).

Three layers:
* the upstream suite, replayed with `jsonschema` + PyYAML exactly as upstream runs it with ajv +
  js-yaml, which proves the vendored data is intact;
* the same files and cases through `parse_pipeline`, asserting what we read from them;
* the 32 derived probes, each with OUR expected outcome. Where that differs from the schema's
  answer, the table says why: we keep unknown step keys (with a warning) like go-pipeline, and
  we refuse steps that would silently do nothing.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from conveyor.errors import PipelineError
from conveyor.pipeline import (
    BlockStep,
    CommandStep,
    Dependency,
    GroupStep,
    Pipeline,
    Plugin,
    RetryRule,
    Step,
    TriggerBuild,
    TriggerStep,
    WaitStep,
    check_graph,
    parse_pipeline,
)

HERE = Path(__file__).parent / "conformance"
SCHEMA: dict[str, Any] = json.loads((HERE / "schema.json").read_text(encoding="utf-8"))
EXPECTATIONS: dict[str, Any] = json.loads((HERE / "expectations.json").read_text(encoding="utf-8"))
UPSTREAM: dict[str, Any] = EXPECTATIONS["upstream"]
FIXTURES: list[str] = UPSTREAM["must_validate_files"]
INLINE: list[dict[str, Any]] = UPSTREAM["inline_cases"]
PROBES: list[dict[str, Any]] = EXPECTATIONS["derived_probes"]


def fixture_text(path: str) -> str:
    return (HERE / path).read_text(encoding="utf-8")


def parse_fixture(name: str) -> Pipeline:
    path = f"valid-pipelines/{name}"
    return parse_pipeline(fixture_text(path), filename=path)


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2)


# --- the vendored data itself -----------------------------------------------------------------


def test_vendored_files_are_complete() -> None:
    on_disk = sorted(p.relative_to(HERE).as_posix() for p in (HERE / "valid-pipelines").iterdir())
    assert on_disk == sorted(FIXTURES)
    assert len(FIXTURES) == 12
    assert len(INLINE) == 4
    assert len(PROBES) == 32
    licence = (HERE / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License")
    assert "Copyright (c) 2018 Buildkite" in licence
    provenance = (HERE / "PROVENANCE.md").read_text(encoding="utf-8")
    assert "829d2f7c715b10256b9a4ea23c3798aac9ea25d2" in provenance


def test_schema_is_a_valid_draft_7_schema() -> None:
    Draft7Validator.check_schema(SCHEMA)
    assert SCHEMA["required"] == ["steps"]


# --- upstream's suite, replayed as upstream runs it -------------------------------------------

VALIDATOR = Draft7Validator(SCHEMA)


@pytest.mark.parametrize("path", FIXTURES)
def test_upstream_fixture_validates_against_the_schema(path: str) -> None:
    # PyYAML's safe_load resolves `<<` merges as js-yaml's safeLoad does (extra-properties.yml).
    document = yaml.safe_load(fixture_text(path))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(document)]
    assert errors == []


@pytest.mark.parametrize("case", INLINE, ids=[c["name"] for c in INLINE])
def test_upstream_inline_case_against_the_schema(case: dict[str, Any]) -> None:
    assert VALIDATOR.is_valid(case["pipeline"]) is case["valid"]


def test_upstream_structural_check_groups_cannot_nest() -> None:
    definitions = SCHEMA["definitions"]
    top = definitions["pipelineSteps"]["items"]["anyOf"]
    grouped = definitions["groupSteps"]["items"]["anyOf"]
    assert top[:-1] == grouped
    assert top[-1] == {"$ref": "#/definitions/groupStep"}


# --- the upstream inline cases through our parser ---------------------------------------------

INLINE_FRAGMENTS = {
    "reject step key longer than 100 characters": "'key' is longer than 100 characters",
    "reject step key with invalid characters (space)": "'key' 'has spaces' may contain only",
}


@pytest.mark.parametrize("case", INLINE, ids=[c["name"] for c in INLINE])
def test_upstream_inline_case_with_our_parser(case: dict[str, Any]) -> None:
    text = as_json(case["pipeline"])
    key = case["pipeline"]["steps"][0]["key"]
    if case["valid"]:
        pipeline = parse_pipeline(text, filename="inline.json")
        assert pipeline.warnings == ()
        (step,) = pipeline.steps
        assert isinstance(step, CommandStep)
        assert (step.key, step.command) == (key, "echo hello")
    else:
        with pytest.raises(PipelineError) as caught:
            parse_pipeline(text, filename="inline.json")
        assert INLINE_FRAGMENTS[case["name"]] in caught.value.problem
        assert (caught.value.file, caught.value.line) == ("inline.json", 5)
        assert caught.value.step == key  # an invalid key still names the step in the message


def test_interpolated_key_is_accepted_and_then_expanded() -> None:
    text = "steps:\n  - command: echo hello\n    key: ${TPU_VERSION:-tpu6e}_build_docker\n"
    (as_written,) = parse_pipeline(text).steps
    assert as_written.key == "${TPU_VERSION:-tpu6e}_build_docker"
    (expanded,) = parse_pipeline(text, env={}).steps
    assert expanded.key == "tpu6e_build_docker"
    (from_env,) = parse_pipeline(text, env={"TPU_VERSION": "v5p"}).steps
    assert from_env.key == "v5p_build_docker"


def test_our_parser_refuses_a_nested_group_too() -> None:
    text = "steps:\n  - group: outer\n    steps:\n      - group: inner\n        steps:\n"
    text += "          - command: x\n"
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(text, filename="nested.yml")
    assert "a group cannot contain another group" in caught.value.problem
    assert (caught.value.line, caught.value.column) == (4, 9)
    assert caught.value.step == "inner"


def test_every_step_kind_but_group_is_accepted_inside_a_group() -> None:
    # The other half of the structural check: a group takes every kind the top level does.
    text = """\
steps:
  - group: all kinds
    steps:
      - command: make
      - wait
      - block: Go?
      - input: Name?
      - trigger: deploy
      - wait: ~
        continue_on_failure: true
"""
    (group,) = parse_pipeline(text).steps
    assert isinstance(group, GroupStep)
    assert [type(s) for s in group.steps] == [
        CommandStep,
        WaitStep,
        BlockStep,
        BlockStep,
        TriggerStep,
        WaitStep,
    ]


# --- every fixture through our parser ---------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    steps: int
    warnings: tuple[tuple[str, int], ...] = ()
    """(fragment, how many warnings hold it); together they must account for every warning."""


ACCEPTED = {
    "block.yml": Accepted(23),
    "command.yml": Accepted(
        50,
        (
            ("this command step has no command", 1),  # `- type: "script"` with nothing else
            ("this step has only plugins, which are not run yet", 1),
            ("'if_changed' is kept but not applied", 1),
        ),
    ),
    "env.yml": Accepted(0),
    "extra-properties.yml": Accepted(1, (("top-level key 'test_label_property'", 1),)),
    "group.yml": Accepted(12, (("'if_changed' is kept but not applied", 1),)),
    "if-changed.yml": Accepted(9, (("'if_changed' is kept but not applied", 8),)),
    # The key-format step reuses each key for a text and a select field.
    "input.yml": Accepted(23, (("two fields have the key", 6),)),
    "matrix.yml": Accepted(6),
    "notify.yml": Accepted(1),
    "secrets.yml": Accepted(1),
    "trigger.yml": Accepted(27, (("'if_changed' is kept but not applied", 1),)),
    "wait.yml": Accepted(17),
}


def test_the_table_covers_every_fixture() -> None:
    assert sorted(f"valid-pipelines/{name}" for name in ACCEPTED) == sorted(FIXTURES)


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_fixture_is_accepted_by_our_parser(name: str) -> None:
    expected = ACCEPTED[name]
    pipeline = parse_fixture(name)
    assert len(pipeline.steps) == expected.steps
    for fragment, count in expected.warnings:
        assert sum(fragment in w for w in pipeline.warnings) == count, pipeline.warnings
    assert len(pipeline.warnings) == sum(count for _, count in expected.warnings)
    for warning in pipeline.warnings:
        assert warning.startswith(f"valid-pipelines/{name}:")


def steps_of(name: str) -> tuple[Step, ...]:
    return parse_fixture(name).steps


def test_block_fixture_values() -> None:
    steps = steps_of("block.yml")
    assert all(isinstance(s, BlockStep) and s.kind == "block" for s in steps[:22])
    first, titled, nested, typed = steps[:4]
    assert isinstance(nested, BlockStep)
    assert isinstance(typed, BlockStep)
    assert (first.label, titled.label, nested.label, typed.label) == (
        None,
        "A label",
        None,
        "A label",
    )
    assert [f.key for f in nested.fields] == [f.key for f in typed.fields] == ["field-1"]
    assert steps[5].branches == ("master",)
    assert (steps[6].key, steps[7].key) == ("an-id", "an-id")  # `id` and `identifier`

    full = steps[9]
    assert isinstance(full, BlockStep)
    assert full.prompt == "A prompt"
    text1, text2, select1, select2 = full.fields
    assert (text1.kind, text1.key, text1.label, text1.required) == (
        "text",
        "field-1",
        "Field 1",
        True,
    )
    assert (text2.required, text2.default, text2.hint) == (False, "Field 2 Default", "Field 2 Hint")
    assert select1.kind == "select"
    assert [(o.label, o.value) for o in select1.options] == [
        ("Select 1 Option 1", "select-1-option-1"),
        ("Select 1 Option 2", "select-1-option-2"),
    ]
    assert (select2.default, select2.required) == ("select-2-option-1", False)

    assert steps[10].condition == "build.message !~ /skip tests/"
    assert steps[16].depends_on == (Dependency("depend-on-me", allow_failure=True),)
    assert steps[17].allow_dependency_failure is True
    multi = steps[19]
    assert isinstance(multi, BlockStep)
    assert multi.fields[0].multiple is True
    assert multi.fields[0].default == ("option-1", "option-2")
    assert steps[21].extra == {
        "allowed_teams": ["team-slug", "9b30da58-3dac-4dbb-89e9-b9748ca76445"]
    }
    group = steps[22]
    assert isinstance(group, GroupStep)
    assert group.steps == (BlockStep(label="A label", line=125),)
    assert all(isinstance(s, BlockStep) and s.blocked_state == "passed" for s in steps[:22])


def test_input_fixture_values() -> None:
    steps = steps_of("input.yml")
    assert all(isinstance(s, BlockStep) and s.kind == "input" for s in steps)
    formats = steps[19]
    assert isinstance(formats, BlockStep)
    assert [f.format for f in formats.fields] == ["\\d{4,4}", "[0-9]{3}", "[0-9a-f]+"]
    keys = steps[22]
    assert isinstance(keys, BlockStep)
    assert keys.label == "Tests for key formatting"
    assert [f.key for f in keys.fields][:6] == [
        "aBc123",
        "123aBc",
        "underscored_key",
        "_underscored_key",
        "dasherized-key",
        "-dasherized-key",
    ]
    assert [f.kind for f in keys.fields] == ["text"] * 6 + ["select"] * 6


def test_command_fixture_values() -> None:
    steps = steps_of("command.yml")
    assert all(isinstance(s, CommandStep) for s in steps)
    command = [s for s in steps if isinstance(s, CommandStep)]
    # Every nesting format (string, `type:`, `command: {command:}`, `script:`, `commands:`).
    assert [s.command for s in command[1:8]] == ["blah.sh"] * 7
    only_plugins = command[8]
    assert only_plugins.command == ""
    assert only_plugins.plugins == (
        Plugin("github.com/buildkite-plugins/a-plugin-buildkite-plugin#v1.0.0", {"run": "app"}),
    )
    assert command[9].agents == command[10].agents == {"os": "macOS"}
    assert command[11].artifact_paths == ("path-one", "path-two")
    assert command[12].artifact_paths == ("path-one",)
    assert command[13].branches == ("master", "deploy-*")
    concurrent = command[14]
    assert (concurrent.concurrency, concurrent.concurrency_group) == (1, "my-group")
    assert concurrent.extra == {"concurrency_method": "eager"}
    assert command[15].env == {"AN_ENV": "value"}
    assert command[19].parallelism == 42
    # Legacy mapping form, bare name and one-key mapping: one canonical form.
    assert [p.config for s in command[20:23] for p in s.plugins] == [
        {"run": "app"},
        None,
        {"run": "app"},
    ]
    assert command[23].retry == (
        RetryRule(exit_status=(-1,), signal_reason="none"),
        RetryRule(signal="SIGKILL"),
        RetryRule(exit_status=(255,)),
        RetryRule(exit_status=(3,), limit=3),
    )
    assert command[24].retry == (RetryRule(exit_status=(-1,)),)
    assert command[25].retry == (RetryRule(),)  # `automatic: true`: any failure, twice
    assert command[26].retry == (RetryRule(exit_status=(1, 2, 3)),)
    assert (command[27].skip, command[28].skip) == (True, "Skipped")
    assert command[29].timeout_in_minutes == 40
    assert [s.soft_fail for s in command[30:34]] == [True, False, (1,), True]
    assert command[34].condition == "build.message !~ /skip tests/"
    assert command[40].depends_on == (Dependency("depend-on-me", allow_failure=True),)
    assert command[41].depends_on == ()  # `depends_on: ~`
    assert (command[43].priority, command[44].priority) == (-1, 100)
    assert command[45].cancel_on_build_failing is True
    signed = command[46]
    assert signed.matrix is not None
    assert [job.values for job in signed.matrix.jobs()] == [{"": "one two three"}]
    assert signed.plugins == (
        Plugin(
            "github.com/buildkite-plugins/docker-buildkite-plugin#v3.0.0",
            {"image": "alpine", "always-pull": True},
        ),
    )
    assert signed.extra["signature"]["algorithm"] == "HS256"
    assert command[47].extra == {"cache": ["dist/", "./src/target/"]}
    assert command[49].extra == {"if_changed": "*.txt"}


def test_group_fixture_values() -> None:
    steps = steps_of("group.yml")
    assert all(isinstance(s, GroupStep) for s in steps)
    groups = [s for s in steps if isinstance(s, GroupStep)]
    assert [g.label for g in groups] == ["Tests"] * 12  # `group: ~` takes its `label`
    assert [len(g.steps) for g in groups] == [1, 1, 1, 1, 1, 1, 3, 4, 1, 1, 1, 1]
    assert (groups[2].key, groups[3].key, groups[5].key) == ("an-id", "an-id", "a-key")
    assert groups[4].depends_on == (Dependency("an-id"),)
    assert [type(s) for s in groups[6].steps] == [WaitStep] * 3
    assert [s.key for s in groups[6].steps] == [None, "waiter", "waiter2"]
    inputs = groups[7].steps
    assert all(isinstance(s, BlockStep) and s.kind == "input" for s in inputs)
    assert [(s.label, s.key) for s in inputs] == [
        (None, None),
        ("A label", None),
        (None, "input"),
        (None, "input2"),
    ]
    assert groups[8].condition == "build.message !~ /skip tests/"
    assert groups[9].allow_dependency_failure is True
    assert groups[10].extra == {"notify": [{"email": "dev@acmeinc.com"}]}


def test_group_fixture_reuses_a_key_which_check_graph_reports() -> None:
    # Parsing looks at one step at a time; the whole-pipeline check finds the clash.
    pipeline = parse_fixture("group.yml")
    with pytest.raises(PipelineError) as caught:
        check_graph(pipeline, filename="group.yml")
    assert caught.value.problem == "key 'an-id' is already used by the step on line 17"
    assert caught.value.line == 22


def test_trigger_fixture_values() -> None:
    steps = steps_of("trigger.yml")
    assert all(isinstance(s, TriggerStep) and s.pipeline == "a-slug" for s in steps)
    trigger = [s for s in steps if isinstance(s, TriggerStep)]
    assert [s.is_async for s in trigger[:3]] == [False, False, True]
    assert trigger[3].branches == ("a-branch",)
    assert [s.build for s in trigger[4:9]] == [
        TriggerBuild(message="A message"),
        TriggerBuild(commit="A commit"),
        TriggerBuild(branch="A branch"),
        TriggerBuild(meta_data={"a-key": "a-val"}),
        TriggerBuild(env={"SOME_ENV": "some val"}),
    ]
    assert trigger[11].label == "Triggered label"
    assert trigger[18].depends_on == (Dependency("depend-on-me", allow_failure=True),)
    assert (trigger[20].skip, trigger[21].skip) == (True, "reason for skipping")
    assert [s.soft_fail for s in trigger[22:26]] == [True, False, (1,), True]


def test_wait_fixture_values() -> None:
    steps = steps_of("wait.yml")
    assert all(isinstance(s, WaitStep) for s in steps)
    wait = [s for s in steps if isinstance(s, WaitStep)]
    assert [s.continue_on_failure for s in wait[:7]] == [False] * 4 + [True] * 3
    assert (wait[7].key, wait[8].key, wait[10].key) == ("an-id", "an-id", "important-step")
    assert wait[9].condition == "build.message !~ /skip tests/"
    assert wait[15].depends_on == (Dependency("depend-on-me", allow_failure=True),)
    assert wait[16].allow_dependency_failure is True


def test_matrix_fixture_values() -> None:
    steps = steps_of("matrix.yml")
    one, adjusted, named, group, numeric, underscored = steps
    assert isinstance(group, GroupStep)
    matrices = [
        s.matrix
        for s in (one, adjusted, named, *group.steps, numeric, underscored)
        if isinstance(s, CommandStep)
    ]
    assert all(m is not None for m in matrices)
    jobs = [[job.values for job in m.jobs()] for m in matrices if m is not None]
    assert jobs[0] == [{"": "one"}, {"": "two"}]
    assert jobs[1] == [{"": "one"}, {"": "two"}]  # "three" is only ever skipped
    assert jobs[2] == [
        {"color": "green", "shape": "hexagon"},
        {"color": "blue", "shape": "hexagon"},
        {"color": "purple", "shape": "octagon"},  # added by an adjustment
    ]
    assert jobs[3] == [{"": "one"}, {"": "two"}]
    assert len(jobs[4]) == 4
    assert jobs[5] == [{"123color": "green"}, {"123color": "blue"}]
    assert jobs[6] == [{"color_123": "green"}, {"color_123": "blue"}]


def test_notify_fixture_keeps_notify_as_data() -> None:
    pipeline = parse_fixture("notify.yml")
    raw = yaml.safe_load(fixture_text("valid-pipelines/notify.yml"))
    assert pipeline.extra == {"notify": raw["notify"]}
    (step,) = pipeline.steps
    assert isinstance(step, CommandStep)
    assert step.command == "blah.sh"
    assert step.extra == {"notify": raw["steps"][0]["notify"]}
    assert "github_check" in step.extra["notify"]


def test_secrets_env_and_merge_fixtures() -> None:
    secrets = parse_fixture("secrets.yml")
    assert secrets.extra == {"secrets": ["GLOBAL_API_TOKEN", "DATABASE_URL"]}
    (step,) = secrets.steps
    assert step.label == ":lock: Test secrets"
    assert step.extra == {
        "secrets": {
            "MY_APP_ACCESS_TOKEN": "API_ACCESS_TOKEN",
            "CUSTOM_DEPLOYMENT_KEY": "DEPLOYMENT_KEY",
        }
    }
    env = parse_fixture("env.yml")
    assert (env.env, env.steps) == ({"AN_ENV": "A value"}, ())
    merged = parse_fixture("extra-properties.yml")
    (step,) = merged.steps
    assert isinstance(step, CommandStep)
    assert (step.command, step.label) == ("test", "Test")
    assert merged.extra == {"test_label_property": {"label": "Test"}}


def test_if_changed_fixture_keeps_every_pattern_form() -> None:
    steps = steps_of("if-changed.yml")
    assert "if_changed" not in steps[0].extra
    assert steps[2].extra["if_changed"] == {"include": "foo/**", "exclude": "foo/baz"}
    assert steps[4].extra["if_changed"] == ["foo/**", "bar/**"]
    assert steps[7].extra["if_changed"] == "{**.go,go.{mod,sum}}"


@pytest.mark.parametrize("path", FIXTURES)
def test_fixture_as_json_parses_the_same(path: str) -> None:
    # The schema is about JSON as much as YAML: the same document, re-encoded, gives the same
    # steps (lines aside).
    from_yaml = parse_pipeline(fixture_text(path))
    from_json = parse_pipeline(as_json(yaml.safe_load(fixture_text(path))))
    assert len(from_json.steps) == len(from_yaml.steps)
    assert [type(s) for s in from_json.steps] == [type(s) for s in from_yaml.steps]
    assert [s.key for s in from_json.steps] == [s.key for s in from_yaml.steps]
    assert [s.label for s in from_json.steps] == [s.label for s in from_yaml.steps]


# --- the derived probes: our outcome for each -------------------------------------------------


@dataclass(frozen=True)
class Ours:
    outcome: str  # "ok": accepted, no warning | "warn": accepted with a warning | "error"
    fragment: str = ""
    """Part of the error, or of the (only) warning."""
    why: str = ""
    """Required wherever our outcome is not the schema's plain answer."""


OURS = {
    "missing top-level steps": Ours(
        "warn",
        "the pipeline has no 'steps' key",
        "as go-pipeline: a document without steps uploads nothing, and we say so",
    ),
    "steps is a mapping, not a list": Ours("error", "'steps' must be a list of steps"),
    "empty mapping as a step": Ours(
        "error",
        "step 1 is not a known step type",
        "a step of no kind would run nothing without a word; we refuse it instead",
    ),
    "unknown key on a command step": Ours(
        "warn",
        "unknown or not yet supported key 'foo' (kept, but ignored)",
        "as go-pipeline: unknown keys are kept in `extra` so newer Buildkite keys still upload",
    ),
    "unknown top-level key": Ours(
        "warn",
        "unknown or not yet supported top-level key 'foo'",
        "accepted as the schema does; the warning says nothing acts on it",
    ),
    "group nested inside a group": Ours("error", "a group cannot contain another group"),
    "group without steps": Ours("error", "this group has no 'steps'"),
    "bare string step that is a shell command": Ours(
        "error", "a step written as a bare string must be 'wait', 'waiter', 'block' or 'input'"
    ),
    "bare string step wait": Ours("ok"),
    "bare string step waiter": Ours("ok"),
    "bare string step block": Ours("ok"),
    "bare string step input": Ours("ok"),
    "key that looks like a UUID": Ours("error", "must not look like a UUID"),
    "priority is a float": Ours("error", "'priority' must be a whole number, got 1.5"),
    "parallelism is a string": Ours("error", "'parallelism' must be a whole number, got '2'"),
    "commands as a list": Ours("ok"),
    "both command and commands present": Ours(
        "warn",
        "'command' is ignored because 'commands' is set",
        "accepted as the schema does, but only one can run, so we say which is dropped",
    ),
    "skip reason longer than 70 characters": Ours("error", "longer than 70 characters"),
    "trigger step with type but no trigger slug": Ours("error", "has no 'trigger'"),
    "wait step that also has a command": Ours("error", "a command step cannot have 'wait'"),
    "matrix setup dimension name with a dash": Ours(
        "error", "matrix dimension name 'a-b' may contain only letters, digits and _"
    ),
    "step env given as a list": Ours("error", "'env' must be a mapping of names to values"),
    "top-level env given as a list": Ours("error", "'env' must be a mapping of names to values"),
    "depends_on is an integer": Ours("error", "'depends_on' must be a step key"),
    "block step with a command": Ours("error", "a command step cannot have 'block'"),
    "soft_fail exit_status as a non-* string": Ours(
        "error", "'exit_status' in 'soft_fail' must be a number or \"*\", got '1'"
    ),
    "timeout_in_minutes as a string": Ours(
        "error", "'timeout_in_minutes' must be a whole number, got '5'"
    ),
    "concurrency without concurrency_group": Ours(
        "warn",
        "'concurrency' has no effect without 'concurrency_group'",
        "accepted as the schema does, but a limit without a group limits nothing",
    ),
    "agents as a list of key=value strings": Ours("ok"),
    "depends_on null": Ours("ok"),
    "wait: null with continue_on_failure": Ours("ok"),
    "plugins list item with two keys": Ours("error", "each item of 'plugins' must name one plugin"),
}


def test_the_probe_table_covers_every_probe() -> None:
    assert sorted(OURS) == sorted(p["name"] for p in PROBES)


@pytest.mark.parametrize("probe", PROBES, ids=[p["name"] for p in PROBES])
def test_probe_schema_answer(probe: dict[str, Any]) -> None:
    assert VALIDATOR.is_valid(probe["pipeline"]) is probe["valid"]


@pytest.mark.parametrize("probe", PROBES, ids=[p["name"] for p in PROBES])
def test_probe_with_our_parser(probe: dict[str, Any]) -> None:
    ours = OURS[probe["name"]]
    plain = "ok" if probe["valid"] else "error"
    # A departure from the schema, or a warning on top of its answer, must say why.
    assert bool(ours.why) == (ours.outcome != plain), probe["name"]

    text = as_json(probe["pipeline"])
    if ours.outcome == "error":
        with pytest.raises(PipelineError) as caught:
            parse_pipeline(text, filename="probe.json")
        assert ours.fragment in caught.value.problem
        assert caught.value.file == "probe.json"
        assert caught.value.line is not None
        assert caught.value.column is not None
        return
    pipeline = parse_pipeline(text, filename="probe.json")
    if ours.outcome == "ok":
        assert pipeline.warnings == ()
    else:
        assert len(pipeline.warnings) == 1
        assert ours.fragment in pipeline.warnings[0]
        assert pipeline.warnings[0].startswith("probe.json:")


@pytest.mark.parametrize("probe", PROBES, ids=[p["name"] for p in PROBES])
def test_probe_as_yaml_gives_the_same_outcome(probe: dict[str, Any]) -> None:
    # The same probe written as YAML (block style), so the positions are YAML positions.
    text = yaml.safe_dump(copy.deepcopy(probe["pipeline"]), sort_keys=False)
    if OURS[probe["name"]].outcome == "error":
        with pytest.raises(PipelineError):
            parse_pipeline(text)
    else:
        parse_pipeline(text)


def test_probe_values_we_accept() -> None:
    by_name = {p["name"]: as_json(p["pipeline"]) for p in PROBES}
    (wait,) = parse_pipeline(by_name["wait: null with continue_on_failure"]).steps
    assert wait == WaitStep(continue_on_failure=True, line=3)
    (step,) = parse_pipeline(by_name["agents as a list of key=value strings"]).steps
    assert isinstance(step, CommandStep)
    assert step.agents == {"queue": "a"}
    (step,) = parse_pipeline(by_name["commands as a list"]).steps
    assert isinstance(step, CommandStep)
    assert step.command == "a\nb"
    (step,) = parse_pipeline(by_name["both command and commands present"]).steps
    assert isinstance(step, CommandStep)
    assert step.command == "b"
    (step,) = parse_pipeline(by_name["concurrency without concurrency_group"]).steps
    assert isinstance(step, CommandStep)
    assert (step.concurrency, step.concurrency_group) == (None, None)
    (step,) = parse_pipeline(by_name["unknown key on a command step"]).steps
    assert step.extra == {"foo": 1}
    kinds = [
        parse_pipeline(by_name[f"bare string step {word}"]).steps[0]
        for word in ("wait", "waiter", "block", "input")
    ]
    assert [type(s).__name__ for s in kinds] == ["WaitStep", "WaitStep", "BlockStep", "BlockStep"]
    assert [getattr(s, "kind", None) for s in kinds] == [None, None, "block", "input"]
