"""Pipelines written with Buildkite's own Python SDK (`buildkite-sdk`), read by our parser.

The SDK is a real client of the format that we did not write: whatever it emits, as JSON or as
YAML, must parse, and the parsed steps must say what the SDK was told. (Running such pipelines
end to end is tested elsewhere.)

SDK habits these tests allow for (see research/pipeline-semantics.md §10):
* `to_yaml()` is PyYAML's `yaml.dump`, so keys come out sorted and the output is YAML 1.1; we
  parse it as YAML 1.2, which reads the same for everything emitted here;
* `if` is spelt `step_if` and `async` `step_async` in Python;
* `WaitStep(continue_on_failure=True)` drops its `wait` key; we refuse the result (a step of no
  kind) rather than guess, and `type="wait"` is the spelling that works.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import buildkite_sdk as sdk
import pytest
from buildkite_sdk.pipeline import Pipeline as SdkPipeline
from jsonschema import Draft7Validator

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
    parse_pipeline,
)
from conveyor.pipeline.steps import Option

SCHEMA = json.loads(
    (Path(__file__).parent / "conformance" / "schema.json").read_text(encoding="utf-8")
)


def command_at(pipeline: Pipeline, index: int) -> CommandStep:
    step = pipeline.steps[index]
    assert isinstance(step, CommandStep)
    return step


# --- the pipelines ----------------------------------------------------------------------------


def commands() -> SdkPipeline:
    p = SdkPipeline()
    p.add_agent("queue", "default")
    p.add_environment_variable("GREETING", "hello")
    p.add_environment_variable("ANSWER", 42)
    p.add_step(
        sdk.CommandStep(
            label=":hammer: Build",
            key="build",
            command="make build",
            parallelism=4,
            step_if='build.branch == "main" && build.message !~ /skip ci/',
            env={"TARGET": "linux", "DEBUG": False, "JOBS": 8},
            agents={"queue": "builders", "os": "linux"},
            timeout_in_minutes=30,
            artifact_paths=["dist/**/*", "logs/*.txt"],
            priority=5,
            branches="main release-*",
            cancel_on_build_failing=True,
        )
    )
    p.add_step(
        sdk.CommandStep(
            name="Lint",
            identifier="lint",
            commands=["make lint", "make vet"],
            agents=["queue=linters", "docker=true"],
            concurrency=2,
            concurrency_group="lint/main",
            concurrency_method="eager",
            skip="linting is broken today",
        )
    )
    return p


def check_commands(pipeline: Pipeline) -> None:
    assert pipeline.env == {"GREETING": "hello", "ANSWER": "42"}
    assert pipeline.agents == {"queue": "default"}
    build, lint = pipeline.steps
    assert build == CommandStep(
        key="build",
        label=":hammer: Build",
        condition='build.branch == "main" && build.message !~ /skip ci/',
        branches=("main", "release-*"),
        command="make build",
        parallelism=4,
        env={"TARGET": "linux", "DEBUG": "false", "JOBS": "8"},
        agents={"queue": "builders", "os": "linux"},
        timeout_in_minutes=30,
        artifact_paths=("dist/**/*", "logs/*.txt"),
        priority=5,
        cancel_on_build_failing=True,
        line=build.line,
    )
    assert isinstance(lint, CommandStep)
    assert (lint.label, lint.key) == ("Lint", "lint")
    assert lint.command == "make lint\nmake vet"
    assert lint.agents == {"queue": "linters", "docker": "true"}
    assert (lint.concurrency, lint.concurrency_group) == (2, "lint/main")
    assert lint.extra == {"concurrency_method": "eager"}
    assert lint.skip == "linting is broken today"


def matrices() -> SdkPipeline:
    p = SdkPipeline()
    p.add_step(
        sdk.CommandStep(
            label="test {{matrix.os}}/{{matrix.python}}",
            command="tox -e py{{matrix.python}}",
            agents={"os": "{{matrix.os}}"},
            matrix=sdk.MatrixObject(
                setup={"os": ["linux", "macos"], "python": ["3.11", "3.12", 313]},
                adjustments=[
                    sdk.MatrixAdjustments(matrix_with={"os": "macos", "python": "3.11"}, skip=True),
                    sdk.MatrixAdjustments(
                        matrix_with={"os": "windows", "python": "3.12"}, soft_fail=True
                    ),
                ],
            ),
        )
    )
    p.add_step(sdk.CommandStep(command="echo {{matrix}}", matrix=["apple", 47, True]))
    return p


def check_matrices(pipeline: Pipeline) -> None:
    named, unnamed = (command_at(pipeline, i) for i in (0, 1))
    assert named.label == "test {{matrix.os}}/{{matrix.python}}"
    assert named.agents == {"os": "{{matrix.os}}"}
    assert named.matrix is not None
    assert named.matrix.dimensions == {"os": ("linux", "macos"), "python": ("3.11", "3.12", "313")}
    jobs = named.matrix.jobs()
    assert [job.values for job in jobs] == [
        {"os": "linux", "python": "3.11"},
        {"os": "linux", "python": "3.12"},
        {"os": "linux", "python": "313"},
        {"os": "macos", "python": "3.12"},
        {"os": "macos", "python": "313"},
        {"os": "windows", "python": "3.12"},
    ]
    assert jobs[-1].extra == {"soft_fail": True}
    assert unnamed.matrix is not None
    assert [job.values for job in unnamed.matrix.jobs()] == [
        {"": "apple"},
        {"": "47"},
        {"": "true"},
    ]


def dag() -> SdkPipeline:
    p = SdkPipeline()
    p.add_step(sdk.CommandStep(key="compile", command="make"))
    p.add_step(sdk.CommandStep(key="unit", command="make unit", depends_on="compile"))
    p.add_step(sdk.CommandStep(key="e2e", command="make e2e", depends_on=["compile"]))
    p.add_step(
        sdk.CommandStep(
            key="report",
            command="make report",
            depends_on=[
                "unit",
                sdk.DependsOnListObject(step="e2e", allow_failure=True),
            ],
            allow_dependency_failure="true",  # the schema's quoted boolean
        )
    )
    return p


def check_dag(pipeline: Pipeline) -> None:
    assert [s.key for s in pipeline.steps] == ["compile", "unit", "e2e", "report"]
    assert [s.depends_on for s in pipeline.steps] == [
        (),
        (Dependency("compile"),),
        (Dependency("compile"),),
        (Dependency("unit"), Dependency("e2e", allow_failure=True)),
    ]
    assert pipeline.steps[3].allow_dependency_failure is True
    assert check_graph(pipeline) == []


def groups() -> SdkPipeline:
    p = SdkPipeline()
    p.add_step(sdk.CommandStep(key="setup", command="make setup"))
    p.add_step(
        sdk.GroupStep(
            group=":test_tube: Tests",
            key="tests",
            depends_on="setup",
            step_if="build.source != 'schedule'",
            steps=[
                sdk.CommandStep(command="make unit", key="unit"),
                "wait",
                sdk.WaitStep(type="wait", continue_on_failure=True),
                sdk.BlockStep(block="Run the slow ones?", key="slow-gate"),
                sdk.CommandStep(command="make slow", depends_on="slow-gate"),
                sdk.InputStep(input="Who reviewed?", fields=[sdk.TextField(key="reviewer")]),
            ],
        )
    )
    p.add_step(sdk.CommandStep(command="make deploy", depends_on="tests"))
    return p


def check_groups(pipeline: Pipeline) -> None:
    _, group, deploy = pipeline.steps
    assert isinstance(group, GroupStep)
    assert (group.label, group.key) == (":test_tube: Tests", "tests")
    assert group.depends_on == (Dependency("setup"),)
    assert group.condition == "build.source != 'schedule'"
    assert [type(s) for s in group.steps] == [
        CommandStep,
        WaitStep,
        WaitStep,
        BlockStep,
        CommandStep,
        BlockStep,
    ]
    _, bare_wait, wait, gate, slow, ask = group.steps
    assert isinstance(bare_wait, WaitStep)
    assert bare_wait.continue_on_failure is False
    assert isinstance(wait, WaitStep)
    assert wait.continue_on_failure is True
    assert isinstance(gate, BlockStep)
    assert (gate.kind, gate.label, gate.key) == ("block", "Run the slow ones?", "slow-gate")
    assert slow.depends_on == (Dependency("slow-gate"),)
    assert isinstance(ask, BlockStep)
    assert (ask.kind, ask.label) == ("input", "Who reviewed?")
    assert [f.key for f in ask.fields] == ["reviewer"]
    assert deploy.depends_on == (Dependency("tests"),)
    assert check_graph(pipeline) == []


def blocks() -> SdkPipeline:
    p = SdkPipeline()
    p.add_step(
        sdk.BlockStep(
            block=":rocket: Release",
            key="release-gate",
            prompt="Fill in the release details",
            blocked_state="failed",
            fields=[
                sdk.TextField(
                    text="Version",
                    key="version",
                    hint="e.g. 1.2.3",
                    format="[0-9]+\\.[0-9]+\\.[0-9]+",
                ),
                sdk.TextField(text="Notes", key="notes", required=False, default="none"),
                sdk.SelectField(
                    select="Regions",
                    key="regions",
                    multiple=True,
                    default=["eu", "us"],
                    options=[
                        sdk.SelectFieldOption(label="Europe", value="eu"),
                        sdk.SelectFieldOption(label="America", value="us"),
                        sdk.SelectFieldOption(label="Asia", value="ap"),
                    ],
                ),
            ],
        )
    )
    p.add_step(sdk.NestedBlockStep(block=sdk.BlockStep(block="Nested form", key="nested-gate")))
    return p


def check_blocks(pipeline: Pipeline) -> None:
    gate, nested = pipeline.steps
    assert isinstance(gate, BlockStep)
    assert (gate.kind, gate.label, gate.key) == ("block", ":rocket: Release", "release-gate")
    assert gate.prompt == "Fill in the release details"
    assert gate.blocked_state == "failed"
    assert gate.fields == (
        Field(
            kind="text",
            key="version",
            label="Version",
            hint="e.g. 1.2.3",
            format="[0-9]+\\.[0-9]+\\.[0-9]+",
        ),
        Field(kind="text", key="notes", label="Notes", required=False, default="none"),
        Field(
            kind="select",
            key="regions",
            label="Regions",
            multiple=True,
            default=("eu", "us"),
            options=(Option("Europe", "eu"), Option("America", "us"), Option("Asia", "ap")),
        ),
    )
    assert isinstance(nested, BlockStep)
    assert (nested.label, nested.key) == ("Nested form", "nested-gate")


def triggers() -> SdkPipeline:
    p = SdkPipeline()
    p.add_step(
        sdk.TriggerStep(
            trigger="deploy-app",
            label=":shipit: Deploy",
            key="deploy",
            step_async=True,
            build=sdk.TriggerStepBuild(
                message="Deploying ${BUILDKITE_COMMIT}",
                commit="abc123",
                branch="main",
                env={"STAGE": "production", "REPLICAS": 3},
                meta_data={"release": "1.2.3"},
            ),
            soft_fail=[sdk.SoftFailObject(exit_status=2)],
        )
    )
    p.add_step(sdk.NestedTriggerStep(trigger=sdk.TriggerStep(trigger="docs", skip=True)))
    return p


def check_triggers(pipeline: Pipeline) -> None:
    deploy, docs = pipeline.steps
    assert deploy == TriggerStep(
        pipeline="deploy-app",
        label=":shipit: Deploy",
        key="deploy",
        is_async=True,
        build=TriggerBuild(
            message="Deploying ${BUILDKITE_COMMIT}",  # parsed without interpolation: as written
            commit="abc123",
            branch="main",
            env={"STAGE": "production", "REPLICAS": "3"},
            meta_data={"release": "1.2.3"},
        ),
        soft_fail=(2,),
        line=deploy.line,
    )
    assert isinstance(docs, TriggerStep)
    assert (docs.pipeline, docs.skip, docs.is_async) == ("docs", True, False)


def retries() -> SdkPipeline:
    p = SdkPipeline()
    p.add_step(
        sdk.CommandStep(
            command="make flaky",
            retry=sdk.CommandStepRetry(
                automatic=[
                    sdk.AutomaticRetry(exit_status=-1, signal_reason="agent_stop", limit=3),
                    sdk.AutomaticRetry(exit_status=[1, 2], limit=1),
                    sdk.AutomaticRetry(signal="SIGKILL"),
                    sdk.AutomaticRetry(exit_status="*", limit=0),
                ],
                manual=sdk.CommandStepManualRetryObject(
                    allowed=False, permit_on_passed=True, reason="deploys are not re-run"
                ),
            ),
            soft_fail=[sdk.SoftFailObject(exit_status=1), sdk.SoftFailObject(exit_status=75)],
        )
    )
    p.add_step(
        sdk.CommandStep(
            command="make ok",
            retry=sdk.CommandStepRetry(automatic=True, manual=False),
            soft_fail=True,
        )
    )
    p.add_step(sdk.CommandStep(command="make any", soft_fail=[sdk.SoftFailObject(exit_status="*")]))
    return p


def check_retries(pipeline: Pipeline) -> None:
    flaky, ok, anything = (command_at(pipeline, i) for i in range(3))
    assert flaky.retry == (
        RetryRule(exit_status=(-1,), signal_reason="agent_stop", limit=3),
        RetryRule(exit_status=(1, 2), limit=1),
        RetryRule(signal="SIGKILL"),
        RetryRule(limit=0),
    )
    assert flaky.manual_retry == ManualRetry(
        allowed=False, permit_on_passed=True, reason="deploys are not re-run"
    )
    assert flaky.soft_fail == (1, 75)
    assert ok.retry == (RetryRule(),)
    assert ok.manual_retry == ManualRetry(allowed=False)
    assert ok.soft_fail is True
    assert anything.soft_fail is True


def plugins() -> SdkPipeline:
    p = SdkPipeline()
    p.add_step(
        sdk.CommandStep(
            command="make test",
            plugins=[
                {"docker#v5.8.0": {"image": "python:3.12", "environment": ["CI"]}},
                "shellcheck#v1.3.0",
                {"my-org/cache#v2": None},
                {"https://git.example.com/p.git#main": {"debug": True}},
            ],
        )
    )
    p.add_step(sdk.CommandStep(plugins={"docker-compose#v4.0.0": {"run": "app"}, "junit#v1": {}}))
    return p


def check_plugins(pipeline: Pipeline) -> None:
    listed, legacy = (command_at(pipeline, i) for i in (0, 1))
    assert listed.plugins == (
        Plugin(
            "github.com/buildkite-plugins/docker-buildkite-plugin#v5.8.0",
            {"image": "python:3.12", "environment": ["CI"]},
        ),
        Plugin("github.com/buildkite-plugins/shellcheck-buildkite-plugin#v1.3.0"),
        Plugin("github.com/my-org/cache-buildkite-plugin#v2"),
        Plugin("https://git.example.com/p.git#main", {"debug": True}),
    )
    assert legacy.command == ""  # a plugins-only step is a command step
    assert legacy.plugins == (
        Plugin(
            "github.com/buildkite-plugins/docker-compose-buildkite-plugin#v4.0.0", {"run": "app"}
        ),
        Plugin("github.com/buildkite-plugins/junit-buildkite-plugin#v1"),
    )


@dataclass(frozen=True)
class Case:
    build: Callable[[], SdkPipeline]
    check: Callable[[Pipeline], None]


CASES = {
    "commands": Case(commands, check_commands),
    "matrices": Case(matrices, check_matrices),
    "dag": Case(dag, check_dag),
    "groups": Case(groups, check_groups),
    "blocks": Case(blocks, check_blocks),
    "triggers": Case(triggers, check_triggers),
    "retries": Case(retries, check_retries),
    "plugins": Case(plugins, check_plugins),
}

RENDERINGS: dict[str, Callable[[SdkPipeline], str]] = {
    "json": lambda p: p.to_json(),
    "compact-json": lambda p: p.to_json(indent=None),
    "yaml": lambda p: p.to_yaml(),
    "yaml-in-order": lambda p: p.to_yaml(sort_keys=False),
}


@pytest.mark.parametrize("rendering", RENDERINGS)
@pytest.mark.parametrize("name", CASES)
def test_sdk_pipeline_parses_to_what_the_sdk_was_told(name: str, rendering: str) -> None:
    text = RENDERINGS[rendering](CASES[name].build())
    pipeline = parse_pipeline(text, filename=f"{name}.{rendering}")
    if name == "plugins":  # one of its steps has nothing but plugins, which are not run yet
        assert [w.split(": ", 1)[1] for w in pipeline.warnings] == [
            "this step has only plugins, which are not run yet: its job does nothing "
            "in step 'step 2'"
        ]
    else:
        assert pipeline.warnings == ()
    CASES[name].check(pipeline)


@pytest.mark.parametrize("name", CASES)
def test_sdk_output_is_valid_by_the_schema(name: str) -> None:
    # Cross-check: what the SDK emits is also what the vendored schema accepts, so the cases
    # above are schema-valid pipelines and not an SDK dialect.
    data: Any = CASES[name].build().to_dict()
    errors = [e.message for e in Draft7Validator(SCHEMA).iter_errors(data)]
    assert errors == []


@pytest.mark.parametrize("name", CASES)
def test_json_and_yaml_renderings_give_the_same_steps(name: str) -> None:
    sdk_pipeline = CASES[name].build()
    from_json = parse_pipeline(sdk_pipeline.to_json())
    from_yaml = parse_pipeline(sdk_pipeline.to_yaml())

    def without_lines(p: Pipeline) -> list[Any]:
        return [(type(s), s.key, s.label, s.depends_on, s.condition, s.extra) for s in p.steps]

    assert without_lines(from_json) == without_lines(from_yaml)
    assert (from_json.env, from_json.agents) == (from_yaml.env, from_yaml.agents)


def test_sdk_env_is_interpolated_at_upload() -> None:
    p = SdkPipeline()
    p.add_environment_variable("WHO", "${USER:-nobody}")
    p.add_step(sdk.CommandStep(label="greet ${WHO}", command="echo hello ${WHO}"))
    for text in (p.to_json(), p.to_yaml()):
        pipeline = parse_pipeline(text, env={"USER": "ada"})
        step = command_at(pipeline, 0)
        assert (step.label, step.command) == ("greet ada", "echo hello ada")
        assert parse_pipeline(text, env={}).steps[0].label == "greet nobody"


def test_sdk_wait_with_continue_on_failure_needs_its_type() -> None:
    # The SDK drops `wait` from WaitStep(continue_on_failure=True); the result is a step of no
    # kind. The schema calls it a valid (empty) command step; we refuse it, naming the problem.
    p = SdkPipeline()
    p.add_step(sdk.CommandStep(command="make"))
    p.add_step(sdk.WaitStep(continue_on_failure=True))
    assert p.to_dict()["steps"][1] == {"continue_on_failure": True}
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(p.to_yaml(), filename="sdk.yml")
    assert caught.value.problem.startswith("step 2 is not a known step type")
    assert "found keys: continue_on_failure" in caught.value.problem
    assert (caught.value.line, caught.value.step) == (3, "step 2")

    fixed = SdkPipeline()
    fixed.add_step(sdk.WaitStep(type="wait", continue_on_failure=True))
    (wait,) = parse_pipeline(fixed.to_yaml()).steps
    assert isinstance(wait, WaitStep)
    assert wait.continue_on_failure is True
