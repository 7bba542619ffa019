"""parse_pipeline on well-formed documents: shapes, YAML 1.2, merges, step kinds, warnings."""

from __future__ import annotations

import textwrap

import pytest

from conveyor.errors import PipelineError
from conveyor.pipeline import (
    BlockStep,
    CommandStep,
    Dependency,
    Field,
    GroupStep,
    ManualRetry,
    Pipeline,
    Plugin,
    RetryRule,
    TriggerBuild,
    TriggerStep,
    WaitStep,
    check_graph,
    display_label,
    parse_pipeline,
)
from conveyor.pipeline.steps import Option


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
              agent_query_rules: 10
              llamas: 3.142
              async: true
              slot: null
              when: 2002-08-15T17:18:23.18-06:00
              parallelism: 10
              retry: {automatic: [{exit_status: -1, limit: 2}]}
            """
        )
    )
    assert step.extra == {
        "agent_query_rules": 10,
        "llamas": 3.142,
        "async": True,  # `async` is modelled on trigger steps only
        "slot": None,
        "when": "2002-08-15T17:18:23.18-06:00",
    }
    assert type(step.extra["agent_query_rules"]) is int
    assert type(step.extra["async"]) is bool
    # Modelled keys are typed fields, not extra data.
    assert step.parallelism == 10
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
        ("one", (Dependency("one"),)),
        ("[one, two]", (Dependency("one"), Dependency("two"))),
        ("~", ()),
        ("[]", ()),
        ("[{step: one}, two]", (Dependency("one"), Dependency("two"))),
        ("[{step: one, allow_failure: true}]", (Dependency("one", allow_failure=True),)),
        ("[{step: one, allow_failure: 'true'}]", (Dependency("one", allow_failure=True),)),
        ("[{step: one, allow_failure: false}, two]", (Dependency("one"), Dependency("two"))),
    ],
)
def test_depends_on_forms(value: str, expected: tuple[Dependency, ...]) -> None:
    step = only_command(parse(f"- command: x\n  depends_on: {value}\n"))
    assert step.depends_on == expected


def test_unknown_step_keys_go_to_extra_with_warnings() -> None:
    pipeline = parse(
        """\
        - label: Tests
          command: make test
          llamas: 3
          agent_query_rules: [queue=a]
          soft_fail: true
        """
    )
    step = only_command(pipeline)
    assert step.extra == {"llamas": 3, "agent_query_rules": ["queue=a"]}
    assert step.soft_fail is True
    assert pipeline.warnings == (
        "p.yml:3:3: unknown or not yet supported key 'llamas' (kept, but ignored) in step 'Tests'",
        "p.yml:4:3: unknown or not yet supported key 'agent_query_rules' (kept, but ignored) "
        "in step 'Tests'",
    )


def test_kept_keys_go_to_extra_without_warnings() -> None:
    pipeline = parse(
        """\
        - command: x
          notify: [github_check]
          cache: [dist/]
          secrets: [TOKEN]
          signature: {algorithm: HS256}
        """
    )
    step = only_command(pipeline)
    assert step.extra == {
        "notify": ["github_check"],
        "cache": ["dist/"],
        "secrets": ["TOKEN"],
        "signature": {"algorithm": "HS256"},
    }
    assert pipeline.warnings == ()


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
        (
            "- wait: ~\n  depends_on: [a, b]",
            WaitStep(depends_on=(Dependency("a"), Dependency("b")), line=1),
        ),
        (
            "- wait: ~\n  if: build.branch == 'main'",
            WaitStep(condition="build.branch == 'main'", line=1),
        ),
        ("- wait: {wait: gate}", WaitStep(label="gate", line=1)),
        ("- wait: ~\n  continue_on_failure: 'true'", WaitStep(continue_on_failure=True, line=1)),
        (
            "- wait: ~\n  allow_dependency_failure: true",
            WaitStep(allow_dependency_failure=True, line=1),
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


def test_display_label_of_other_kinds() -> None:
    assert display_label(BlockStep(), 1) == "block"
    assert display_label(BlockStep(kind="input"), 1) == "input"
    assert display_label(BlockStep(label="Release?"), 1) == "Release?"
    assert display_label(TriggerStep(pipeline="deploy"), 1) == "trigger deploy"
    assert display_label(GroupStep(), 3) == "group 3"
    assert display_label(GroupStep(label="Tests"), 3) == "Tests"


# --- command step fields ----------------------------------------------------------------------


def test_command_step_fields() -> None:
    step = only_command(
        parse(
            """\
            - label: Build
              key: build
              command: make
              parallelism: 3
              timeout_in_minutes: 15
              priority: -2
              artifact_paths: "dist/*;logs/*.txt"
              concurrency: 2
              concurrency_group: deploys
              concurrency_method: ordered
              cancel_on_build_failing: true
              skip: not today
              branches: [main, "release-* !release-old"]
              if: build.branch == "main"
              allow_dependency_failure: true
            """
        )
    )
    assert step == CommandStep(
        label="Build",
        key="build",
        command="make",
        parallelism=3,
        timeout_in_minutes=15,
        priority=-2,
        artifact_paths=("dist/*", "logs/*.txt"),
        concurrency=2,
        concurrency_group="deploys",
        cancel_on_build_failing=True,
        skip="not today",
        branches=("main", "release-*", "!release-old"),
        condition='build.branch == "main"',
        allow_dependency_failure=True,
        extra={"concurrency_method": "ordered"},
        line=1,
    )


def test_concurrency_group_alone_means_one_at_a_time() -> None:
    step = only_command(parse("- command: x\n  concurrency_group: g\n"))
    assert (step.concurrency, step.concurrency_group) == (1, "g")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("false", False),
        ("'true'", True),
        ("~", False),
        ("[{exit_status: 1}, {exit_status: -1}]", (1, -1)),
        ("[{exit_status: 1}, {exit_status: '*'}]", True),
        ("[]", ()),
    ],
)
def test_soft_fail_forms(value: str, expected: bool | tuple[int, ...]) -> None:
    assert only_command(parse(f"- command: x\n  soft_fail: {value}\n")).soft_fail == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("false", False), ("~", False), ("'reason'", "reason"), ("''", False)],
)
def test_skip_forms(value: str, expected: bool | str) -> None:
    assert only_command(parse(f"- command: x\n  skip: {value}\n")).skip == expected


@pytest.mark.parametrize(
    ("retry", "rules", "manual"),
    [
        ("{automatic: true}", (RetryRule(),), ManualRetry()),
        ("{automatic: 'true'}", (RetryRule(),), ManualRetry()),
        ("{automatic: false}", (), ManualRetry()),
        ("{automatic: {exit_status: '*', limit: 4}}", (RetryRule(limit=4),), ManualRetry()),
        (
            "{automatic: [{exit_status: [1, 2], signal_reason: agent_stop}, {signal: term}]}",
            (
                RetryRule(exit_status=(1, 2), signal_reason="agent_stop"),
                RetryRule(signal="SIGTERM"),
            ),
            ManualRetry(),
        ),
        # limit 0 (as the schema allows) shields one status from the catch-all rule after it.
        (
            "{automatic: [{exit_status: 3, limit: 0}, {exit_status: '*'}]}",
            (RetryRule(exit_status=(3,), limit=0), RetryRule()),
            ManualRetry(),
        ),
        ("{manual: false}", (), ManualRetry(allowed=False)),
        ("{manual: 'false'}", (), ManualRetry(allowed=False)),
        (
            "{manual: {allowed: false, reason: frozen, permit_on_passed: 'true'}}",
            (),
            ManualRetry(allowed=False, reason="frozen", permit_on_passed=True),
        ),
        ("~", (), ManualRetry()),
    ],
)
def test_retry_forms(retry: str, rules: tuple[RetryRule, ...], manual: ManualRetry) -> None:
    step = only_command(parse(f"- command: x\n  retry: {retry}\n"))
    assert step.retry == rules
    assert step.manual_retry == manual


def test_retry_limit_zero_never_retries() -> None:
    (shield, catch_all) = only_command(
        parse("- command: x\n  retry: {automatic: [{exit_status: 3, limit: 0}, {limit: 2}]}\n")
    ).retry
    assert shield.matches(3, None) and shield.limit == 0
    assert catch_all.matches(3, None)  # the first rule that matches decides: `shield`


def test_plugin_forms_and_sources() -> None:
    pipeline = parse(
        """\
        - command: x
          plugins:
            - docker#v5.8.0: {image: alpine}
            - shellcheck#v1.0.0
            - my-org/thing#main: ~
            - ./local/plugin: {a: 1}
            - https://example.com/p.git#v1: []
            - github.com/org/repo-buildkite-plugin#v2: {}
        - plugins:
            docker-compose#v4: {run: app}
            junit: ~
        - command: y
          plugins: ~
        """
    )
    first, legacy, none = pipeline.steps
    assert isinstance(first, CommandStep)
    assert first.plugins == (
        Plugin("github.com/buildkite-plugins/docker-buildkite-plugin#v5.8.0", {"image": "alpine"}),
        Plugin("github.com/buildkite-plugins/shellcheck-buildkite-plugin#v1.0.0"),
        Plugin("github.com/my-org/thing-buildkite-plugin#main"),
        Plugin("./local/plugin", {"a": 1}),
        Plugin("https://example.com/p.git#v1"),
        Plugin("github.com/org/repo-buildkite-plugin#v2"),
    )
    assert isinstance(legacy, CommandStep)
    assert [p.source for p in legacy.plugins] == [
        "github.com/buildkite-plugins/docker-compose-buildkite-plugin#v4",
        "github.com/buildkite-plugins/junit-buildkite-plugin",
    ]
    assert legacy.command == ""
    assert isinstance(none, CommandStep)
    assert none.plugins == ()
    # Only the step that has nothing but plugins is worth a warning: its job does nothing.
    (warning,) = pipeline.warnings
    assert warning.startswith("p.yml:9:3: this step has only plugins, which are not run yet")


def test_matrix_on_a_command_step() -> None:
    step = only_command(
        parse(
            """\
            - command: "make {{matrix.os}}"
              label: "{{matrix.os}} build"
              matrix:
                setup:
                  os: [linux, mac]
                adjustments:
                  - with: {os: bsd}
                    soft_fail: true
            """
        )
    )
    assert step.matrix is not None
    assert [(job.values, job.extra) for job in step.matrix.jobs()] == [
        ({"os": "linux"}, {}),
        ({"os": "mac"}, {}),
        ({"os": "bsd"}, {"soft_fail": True}),
    ]


def test_nested_command_forms_read_the_inner_keys() -> None:
    pipeline = parse(
        """\
        - command: {command: make, label: inner}
        - script: {command: [a, b], key: s}
          label: outer
        - commands: {commands: make test}
        """
    )
    a, b, c = pipeline.steps
    assert isinstance(a, CommandStep) and (a.command, a.label) == ("make", "inner")
    assert isinstance(b, CommandStep) and (b.command, b.key, b.label) == ("a\nb", "s", "outer")
    assert isinstance(c, CommandStep) and c.command == "make test"


# --- block and input steps --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- block", BlockStep(line=1)),
        ("- input", BlockStep(kind="input", line=1)),
        ("- manual", BlockStep(line=1)),
        ("- block: Release?", BlockStep(label="Release?", line=1)),
        ("- block: Release?\n  label: Ship it", BlockStep(label="Ship it", line=1)),
        ("- type: input\n  label: Ask", BlockStep(kind="input", label="Ask", line=1)),
        ("- manual: Go?\n  key: go", BlockStep(label="Go?", key="go", line=1)),
        ("- block: {block: Nested, key: n}", BlockStep(label="Nested", key="n", line=1)),
        ("- input: {key: i, prompt: P}", BlockStep(kind="input", key="i", prompt="P", line=1)),
        (
            "- block: B\n  blocked_state: running",
            BlockStep(label="B", blocked_state="running", line=1),
        ),
        (
            "- block: B\n  allowed_teams: [ops]",
            BlockStep(label="B", extra={"allowed_teams": ["ops"]}, line=1),
        ),
    ],
)
def test_block_forms(text: str, expected: BlockStep) -> None:
    pipeline = parse_pipeline(text)
    assert pipeline.steps == (expected,)
    assert pipeline.warnings == ()


def test_block_fields() -> None:
    (step,) = parse(
        """\
        - block: Release
          prompt: Details please
          fields:
            - text: Version
              key: version
              hint: like 1.2.3
              format: "[0-9.]+"
            - key: notes
              required: false
              default: none
            - select: Stream
              key: stream
              default: beta
              options:
                - {label: Stable, value: stable}
                - {label: Beta, value: beta}
            - key: regions
              multiple: true
              default: [eu, us]
              options:
                - {label: Europe, value: eu}
                - {label: America, value: us}
              required: 'false'
        """
    ).steps
    assert isinstance(step, BlockStep)
    assert step.prompt == "Details please"
    assert step.fields == (
        Field(kind="text", key="version", label="Version", hint="like 1.2.3", format="[0-9.]+"),
        # No label: a text field named by its key, as the schema allows.
        Field(kind="text", key="notes", label="notes", required=False, default="none"),
        Field(
            kind="select",
            key="stream",
            label="Stream",
            default="beta",
            options=(Option("Stable", "stable"), Option("Beta", "beta")),
        ),
        Field(
            kind="select",
            key="regions",
            label="regions",
            multiple=True,
            default=("eu", "us"),
            options=(Option("Europe", "eu"), Option("America", "us")),
            required=False,
        ),
    )


def test_blocked_state_on_an_input_step_is_accepted_with_a_warning() -> None:
    pipeline = parse("- input: Who?\n  blocked_state: failed\n")
    (step,) = pipeline.steps
    assert isinstance(step, BlockStep)
    assert (step.kind, step.blocked_state) == ("input", "passed")
    assert pipeline.warnings == (
        "p.yml:2:3: 'blocked_state' has no effect on an input step in step 'Who?'",
    )


# --- trigger steps ----------------------------------------------------------------------------


def test_trigger_step_fields() -> None:
    (step,) = parse(
        """\
        - trigger: deploy-app
          label: Deploy
          key: deploy
          async: true
          soft_fail: [{exit_status: 3}]
          skip: false
          depends_on: build
          build:
            message: "Deploy $BUILDKITE_COMMIT"
            commit: HEAD
            branch: main
            env: {STAGE: prod, N: 2}
            meta_data: {release: "1.0"}
        """
    ).steps
    assert step == TriggerStep(
        pipeline="deploy-app",
        label="Deploy",
        key="deploy",
        is_async=True,
        soft_fail=(3,),
        depends_on=(Dependency("build"),),
        build=TriggerBuild(
            message="Deploy $BUILDKITE_COMMIT",
            commit="HEAD",
            branch="main",
            env={"STAGE": "prod", "N": "2"},
            meta_data={"release": "1.0"},
        ),
        line=1,
    )


@pytest.mark.parametrize(
    "text",
    [
        "- trigger: deploy",
        "- type: trigger\n  trigger: deploy",
        "- trigger: {trigger: deploy}",
        "- trigger: ' deploy '",
        "- trigger: deploy\n  async: false\n  build: ~",
    ],
)
def test_trigger_forms(text: str) -> None:
    pipeline = parse_pipeline(text)
    assert pipeline.steps == (TriggerStep(pipeline="deploy", line=1),)
    assert pipeline.warnings == ()


def test_nested_trigger_keeps_inner_and_outer_keys() -> None:
    pipeline = parse("- trigger: {trigger: deploy, async: 'true', label: inner}\n  label: outer\n")
    (step,) = pipeline.steps
    assert isinstance(step, TriggerStep)
    assert (step.pipeline, step.is_async, step.label) == ("deploy", True, "outer")
    assert len(pipeline.warnings) == 1
    assert "'label' is set both inside and outside 'trigger'" in pipeline.warnings[0]


# --- group steps ------------------------------------------------------------------------------


def test_group_step() -> None:
    (group,) = parse(
        """\
        - group: ":test_tube: Tests"
          key: tests
          depends_on: [build]
          if: build.branch != "wip"
          notify: [github_check]
          steps:
            - command: make unit
              key: unit
            - wait
            - block: More?
            - trigger: docs
        """
    ).steps
    assert isinstance(group, GroupStep)
    assert (group.label, group.key, group.condition) == (
        ":test_tube: Tests",
        "tests",
        'build.branch != "wip"',
    )
    assert group.depends_on == (Dependency("build"),)
    assert group.extra == {"notify": ["github_check"]}
    assert [type(s) for s in group.steps] == [CommandStep, WaitStep, BlockStep, TriggerStep]
    assert [s.line for s in group.steps] == [7, 9, 10, 11]


@pytest.mark.parametrize(
    ("text", "label", "count"),
    [
        ("- group: G\n  steps: []", "G", 0),
        ("- group: ~\n  steps: ~", None, 0),
        ("- group: ~\n  label: L\n  steps: [wait]", "L", 1),
        ("- group: G\n  label: L\n  steps: [wait]", "G", 1),
        ("- type: group\n  name: N\n  steps: [wait]", "N", 1),
    ],
)
def test_group_forms(text: str, label: str | None, count: int) -> None:
    (group,) = parse_pipeline(text).steps
    assert isinstance(group, GroupStep)
    assert (group.label, len(group.steps)) == (label, count)


# --- quoted booleans --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["'true'", '"true"', "true"])
def test_quoted_booleans_are_accepted_as_the_schema_does(value: str) -> None:
    pipeline = parse(
        f"""\
        - command: x
          cancel_on_build_failing: {value}
          allow_dependency_failure: {value}
        - trigger: t
          async: {value}
        - wait: ~
          continue_on_failure: {value}
        """
    )
    command, trigger, wait = pipeline.steps
    assert isinstance(command, CommandStep)
    assert command.cancel_on_build_failing and command.allow_dependency_failure
    assert isinstance(trigger, TriggerStep) and trigger.is_async
    assert isinstance(wait, WaitStep) and wait.continue_on_failure


# --- interpolation and step names -------------------------------------------------------------


def test_interpolation_happens_before_parsing() -> None:
    pipeline = parse_pipeline(
        "env:\n  Q: fast\nsteps:\n  - command: echo $WHO\n    key: ${KEY:-k}\n"
        "    agents: {queue: $Q}\n",
        env={"WHO": "ada"},
    )
    step = only_command(pipeline)
    assert (step.command, step.key, step.agents) == ("echo ada", "k", {"queue": "fast"})
    assert pipeline.env == {"Q": "fast"}


@pytest.mark.parametrize(
    ("text", "line", "step"),
    [
        ("- label: L\n  command: echo ${X:?must be set}\n", 2, "L"),
        ("- wait\n- command: echo ${X?}\n", 2, "step 2"),
        (
            "- group: G\n  steps:\n    - command: ok\n"
            "    - key: inner\n      command: $${X} ${X?}\n",
            5,
            "inner",
        ),
        ("- block: Go?\n  prompt: ${X:?}\n", 2, "Go?"),
    ],
)
def test_interpolation_errors_name_the_step(text: str, line: int, step: str) -> None:
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(text, filename="i.yml", env={})
    assert (caught.value.file, caught.value.line, caught.value.step) == ("i.yml", line, step)
    assert caught.value.problem.startswith("$X: ")


def test_interpolation_errors_outside_steps_name_no_step() -> None:
    text = "env:\n  A: ${X:?needed}\nsteps:\n  - command: x\n"
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(text, filename="i.yml", env={})
    assert (caught.value.line, caught.value.step) == (2, None)
    assert caught.value.problem == "$X: needed"


# --- check_graph ------------------------------------------------------------------------------


def test_check_graph_accepts_known_and_earlier_keys() -> None:
    pipeline = parse(
        """\
        - command: a
          key: a
        - group: G
          key: g
          steps:
            - command: b
              key: b
              depends_on: a
        - command: c
          depends_on: [g, b, {step: from-before, allow_failure: true}]
        """
    )
    assert check_graph(pipeline, known={"from-before"}) == []


def test_check_graph_can_return_unknown_dependencies_as_warnings() -> None:
    pipeline = parse("- command: a\n  depends_on: [nope, also-nope]\n")
    warnings = check_graph(pipeline, filename="g.yml", unknown_is_error=False)
    assert warnings == [
        "g.yml:1: depends_on names 'nope', but no step has that key in step 'a'",
        "g.yml:1: depends_on names 'also-nope', but no step has that key in step 'a'",
    ]


def test_check_graph_refuses_a_key_already_in_the_build() -> None:
    pipeline = parse("- command: a\n  key: build\n")
    with pytest.raises(PipelineError) as caught:
        check_graph(pipeline, filename="g.yml", known={"build"})
    assert str(caught.value) == (
        "g.yml:1: key 'build' is already used by a step of this build in step 'a'"
    )
