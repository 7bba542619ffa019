"""parse_pipeline on well-formed documents: shapes, YAML 1.2, merges, step kinds, warnings."""

from __future__ import annotations

import textwrap

import pytest

from conveyor.pipeline import (
    CommandStep,
    Pipeline,
    RetryRule,
    WaitStep,
    display_label,
    parse_pipeline,
)


def parse(text: str) -> Pipeline:
    return parse_pipeline(textwrap.dedent(text), filename="p.yml")


def only_command(pipeline: Pipeline) -> CommandStep:
    assert len(pipeline.steps) == 1
    step = pipeline.steps[0]
    assert isinstance(step, CommandStep)
    return step


# --- document shape ---------------------------------------------------------------------------


def test_mapping_form_with_env_and_agents() -> None:
    pipeline = parse(
        """\
        env:
          GREETING: hello
        agents:
          queue: linux
        steps:
          - command: echo one
          - label: Two
            command: echo two
        """
    )
    assert pipeline.env == {"GREETING": "hello"}
    assert pipeline.agents == {"queue": "linux"}
    assert [s.command for s in pipeline.steps if isinstance(s, CommandStep)] == [
        "echo one",
        "echo two",
    ]
    assert [s.line for s in pipeline.steps] == [6, 7]
    assert pipeline.warnings == ()


def test_bare_list_form() -> None:
    pipeline = parse(
        """\
        - command: make
        - wait
        - command: make test
        """
    )
    assert [type(s) for s in pipeline.steps] == [CommandStep, WaitStep, CommandStep]
    assert pipeline.env == {}
    assert pipeline.warnings == ()


def test_json_input_with_leading_blank_lines() -> None:
    pipeline = parse_pipeline('\n\n[{"command":"bye"}]\n')
    assert only_command(pipeline).command == "bye"


def test_json_mapping_with_escapes() -> None:
    text = '{"steps": [{"command": "printf \\"a\\\\bb\\\\f\\\\u0080\\"", "env": {"N": 1}}]}'
    step = only_command(parse_pipeline(text))
    assert step.command == 'printf "a\\bb\\f\\u0080"'
    assert step.env == {"N": "1"}
    escaped = only_command(parse_pipeline('[{"command": "x\\by\\fz\\u0080"}]'))
    assert escaped.command == "x\by\fz\x80"


@pytest.mark.parametrize("steps", ["steps: null", "steps:", "steps: []", "steps: ~"])
def test_empty_steps_give_no_steps_and_no_warning(steps: str) -> None:
    pipeline = parse_pipeline(steps + "\nenv: null\n")
    assert pipeline.steps == ()
    assert pipeline.env == {}
    assert pipeline.warnings == ()


def test_missing_steps_key_warns() -> None:
    pipeline = parse_pipeline("env:\n  A: b\n", filename="p.yml")
    assert pipeline.steps == ()
    assert pipeline.env == {"A": "b"}
    assert len(pipeline.warnings) == 1
    assert pipeline.warnings[0].startswith("p.yml:1:1: ")
    assert "no 'steps' key" in pipeline.warnings[0]


def test_unknown_top_level_key_is_kept_with_a_warning() -> None:
    pipeline = parse(
        """\
        steps: []
        base_step:
          timeout_in_minutes: 10
        """
    )
    assert pipeline.extra == {"base_step": {"timeout_in_minutes": 10}}
    assert len(pipeline.warnings) == 1
    assert pipeline.warnings[0].startswith("p.yml:2:1: ")
    assert "'base_step'" in pipeline.warnings[0]


def test_only_the_first_document_is_read() -> None:
    pipeline = parse_pipeline("- command: first\n---\n- command: second\n---\n[ broken\n")
    assert only_command(pipeline).command == "first"


# --- YAML 1.2 ---------------------------------------------------------------------------------


def test_yaml_1_2_scalars_stay_strings() -> None:
    pipeline = parse(
        """\
        env:
          YES: yes
          NO: no
          ON: on
          WHEN: 2002-08-15T17:18:23.18-06:00
          DAY: 2002-08-15
        agents:
          slurm_time: 12:00:00
        steps:
          - command: x
            env:
              ANSWER: yes
        """
    )
    assert pipeline.env == {
        "YES": "yes",
        "NO": "no",
        "ON": "on",
        "WHEN": "2002-08-15T17:18:23.18-06:00",
        "DAY": "2002-08-15",
    }
    assert pipeline.agents == {"slurm_time": "12:00:00"}
    assert only_command(pipeline).env == {"ANSWER": "yes"}


def test_scalars_are_formatted_the_go_way() -> None:
    step = only_command(
        parse(
            """\
            - command: x
              env:
                BOOL: true
                CAPS: TRUE
                INT: 42
                HEX: 0x2A
                OCTAL: 0o52
                UNDERSCORE: 123_456
                FLOAT: 2.5
                E: 2.71828
                BIG: 1000000.0
                NOTHING: ~
                QUOTED: "007"
            """
        )
    )
    assert step.env == {
        "BOOL": "true",
        "CAPS": "true",
        "INT": "42",
        "HEX": "42",
        "OCTAL": "42",
        "UNDERSCORE": "123456",
        "FLOAT": "2.5",
        "E": "2.71828",
        "BIG": "1e+06",
        "NOTHING": "",
        "QUOTED": "007",
    }


def test_unmodelled_keys_keep_their_types() -> None:
    step = only_command(
        parse(
            """\
            - command: x
              parallelism: 10
              llamas: 3.142
              async: true
              slot: null
              when: 2002-08-15T17:18:23.18-06:00
              retry: {automatic: [{exit_status: -1, limit: 2}]}
            """
        )
    )
    assert step.extra == {
        "parallelism": 10,
        "llamas": 3.142,
        "async": True,
        "slot": None,
        "when": "2002-08-15T17:18:23.18-06:00",
    }
    assert type(step.extra["parallelism"]) is int
    assert type(step.extra["async"]) is bool
    # `retry` is modelled: typed rules, not extra data.
    assert step.retry == (RetryRule(exit_status=(-1,), limit=2),)


# --- anchors, aliases, merge keys -------------------------------------------------------------


def test_merge_key_direct_key_beats_merged() -> None:
    pipeline = parse(
        """\
        base_step: &base
          command: from-base
          label: Base
          agents: {queue: builders}
        steps:
          - <<: *base
            command: mine
        """
    )
    step = pipeline.steps[0]
    assert isinstance(step, CommandStep)
    assert step.command == "mine"
    assert step.label == "Base"
    assert step.agents == {"queue": "builders"}
    assert step.line == 6


def test_merge_list_first_wins_and_repeated_merge_keys_act_as_a_list() -> None:
    pipeline = parse(
        """\
        a: &a {label: from-a}
        b: &b {label: from-b, env: {B: "1"}}
        steps:
          - <<: [*a, *b]
            command: x
          - <<: *a
            <<: *b
            command: y
        """
    )
    first, second = pipeline.steps
    assert isinstance(first, CommandStep)
    assert isinstance(second, CommandStep)
    assert (first.label, first.env) == ("from-a", {"B": "1"})
    assert (second.label, second.env) == ("from-a", {"B": "1"})


def test_merged_step_type_is_resolved_before_inference() -> None:
    step = only_command(
        parse(
            """\
            x-anchors:
              base: &base_step {command: echo hi, env: {A: "1"}}
            steps:
              - <<: *base_step
                label: merged
            """
        )
    )
    assert (step.command, step.label, step.env) == ("echo hi", "merged", {"A": "1"})


def test_alias_of_a_whole_step_and_of_a_scalar() -> None:
    pipeline = parse(
        """\
        - &build
          command: make
          env: {TARGET: &target linux}
        - *build
        - command: echo
          env: {TARGET: *target}
        """
    )
    a, b, c = pipeline.steps
    assert a == b
    assert isinstance(c, CommandStep)
    assert c.env == {"TARGET": "linux"}


def test_map_merging_itself() -> None:
    pipeline = parse("steps: []\nx: &x\n  b: c\n  <<: *x\n")
    assert pipeline.extra == {"x": {"b": "c"}}


# --- command steps ----------------------------------------------------------------------------


def test_command_list_is_joined_without_final_newline() -> None:
    step = only_command(parse("- command: [echo foo, echo bar]\n"))
    assert step.command == "echo foo\necho bar"


def test_command_block_keeps_final_newline() -> None:
    step = only_command(
        parse(
            """\
            - command: |
                echo foo
                echo bar
            """
        )
    )
    assert step.command == "echo foo\necho bar\n"


@pytest.mark.parametrize(
    "text",
    [
        "- command: echo foo",
        "- command: [echo foo]",
        "- commands: echo foo",
        "- commands: [echo foo]",
    ],
)
def test_command_and_commands_are_aliases(text: str) -> None:
    assert only_command(parse(text)).command == "echo foo"


def test_commands_wins_over_command_with_a_warning() -> None:
    pipeline = parse("- command: a\n  commands: b\n")
    assert only_command(pipeline).command == "b"
    assert len(pipeline.warnings) == 1
    assert pipeline.warnings[0].startswith("p.yml:1:3: 'command' is ignored")


@pytest.mark.parametrize(
    ("text", "label", "key"),
    [
        ("- command: x\n  name: N\n  id: i\n", "N", "i"),
        ("- command: x\n  identifier: ident\n", None, "ident"),
        ("- command: x\n  label: L\n  key: k\n", "L", "k"),
    ],
)
def test_label_and_key_aliases(text: str, label: str | None, key: str | None) -> None:
    step = only_command(parse(text))
    assert (step.label, step.key) == (label, key)


def test_canonical_key_wins_over_aliases() -> None:
    pipeline = parse(
        "- command: x\n  name: alias\n  label: canon\n  id: alias-id\n  key: canon-id\n"
    )
    step = only_command(pipeline)
    assert (step.label, step.key) == ("canon", "canon-id")
    assert [w.split(": ", 1)[0] for w in pipeline.warnings] == ["p.yml:2:3", "p.yml:4:3"]


@pytest.mark.parametrize("type_", ["command", "script"])
def test_type_decides_command(type_: str) -> None:
    step = only_command(parse(f"- type: {type_}\n  command: make\n"))
    assert step.command == "make"


def test_agents_as_list_of_key_values() -> None:
    step = only_command(parse("- command: x\n  agents: ['queue=linux', 'os=mac=ok']\n"))
    assert step.agents == {"queue": "linux", "os": "mac=ok"}


def test_agents_mapping_values_formatted() -> None:
    step = only_command(parse("- command: x\n  agents: {gpu: true, cores: 8}\n"))
    assert step.agents == {"gpu": "true", "cores": "8"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("one", ("one",)),
        ("[one, two]", ("one", "two")),
        ("~", ()),
        ("[{step: one}, two]", ("one", "two")),
    ],
)
def test_depends_on_forms(value: str, expected: tuple[str, ...]) -> None:
    step = only_command(parse(f"- command: x\n  depends_on: {value}\n"))
    assert step.depends_on == expected


def test_unknown_step_keys_go_to_extra_with_warnings() -> None:
    pipeline = parse(
        """\
        - label: Tests
          command: make test
          soft_fail: true
          timeout_in_minutes: 5
        """
    )
    step = only_command(pipeline)
    assert step.extra == {"soft_fail": True, "timeout_in_minutes": 5}
    assert pipeline.warnings == (
        "p.yml:3:3: unknown or not yet supported key 'soft_fail' (kept, but ignored) "
        "in step 'Tests'",
        "p.yml:4:3: unknown or not yet supported key 'timeout_in_minutes' (kept, but ignored) "
        "in step 'Tests'",
    )


# --- wait steps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- wait", WaitStep(line=1)),
        ("- waiter", WaitStep(line=1)),
        ("- wait: ~", WaitStep(line=1)),
        ("- wait:", WaitStep(line=1)),
        ('- wait: "Deploy gate"', WaitStep(label="Deploy gate", line=1)),
        ("- type: wait", WaitStep(line=1)),
        ("- type: waiter\n  key: w1", WaitStep(key="w1", line=1)),
        ("- wait: ~\n  continue_on_failure: true", WaitStep(continue_on_failure=True, line=1)),
        ("- wait: {continue_on_failure: true}", WaitStep(continue_on_failure=True, line=1)),
        ("- waiter: {continue_on_failure: true}", WaitStep(continue_on_failure=True, line=1)),
        ("- wait: x\n  label: L\n  id: k", WaitStep(label="L", key="k", line=1)),
        ("- wait\n  # comment", WaitStep(line=1)),
        ("- wait: ~\n  depends_on: [a, b]", WaitStep(depends_on=("a", "b"), line=1)),
        (
            "- wait: ~\n  if: build.branch == 'main'",
            WaitStep(extra={"if": "build.branch == 'main'"}, line=1),
        ),
    ],
)
def test_wait_forms(text: str, expected: WaitStep) -> None:
    pipeline = parse_pipeline(text)
    assert pipeline.steps == (expected,)


def test_wait_step_line() -> None:
    pipeline = parse("steps:\n  - command: a\n\n  - wait\n  - command: b\n")
    assert [s.line for s in pipeline.steps] == [2, 4, 5]


# --- display_label ----------------------------------------------------------------------------


def test_display_label() -> None:
    assert display_label(CommandStep(command="make", label="Build"), 1) == "Build"
    assert display_label(CommandStep(command="\n  make test  \nmore"), 1) == "make test"
    long = display_label(CommandStep(command="x" * 100), 1)
    assert len(long) == 60
    assert long.endswith("…")
    assert display_label(CommandStep(command=" \n "), 4) == "step 4"
    assert display_label(WaitStep(), 2) == "wait"
