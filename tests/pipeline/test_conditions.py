"""Step `if:` conditions: Buildkite's language, strict at parse time and lazy at run time."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.errors import PipelineError
from conveyor.pipeline.conditions import STATES, BuildFacts, Condition, parse_condition


def run(text: str, **facts: Any) -> bool:
    return parse_condition(text).evaluate(BuildFacts(**facts))


def parse_problem(text: str) -> str:
    with pytest.raises(PipelineError) as caught:
        parse_condition(text)
    return caught.value.problem


def run_problem(text: str, **facts: Any) -> str:
    condition = parse_condition(text)  # must parse: these fail only when evaluated
    with pytest.raises(PipelineError) as caught:
        condition.evaluate(BuildFacts(**facts))
    return caught.value.problem


# --- values, operators and precedence -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # null is a value like any other for == and a non-match for regexes and includes
        ("null == null", True),
        ("null != null", False),
        ('["a"] == null', False),
        ("true == null", False),
        ("null =~ /x/", False),
        ("null !~ /x/", True),
        ('null includes "x"', False),
        ("null", False),
        # equality is strict about type
        ("1 == 1", True),
        ("1 != 2", True),
        ('1 == "1"', False),
        ("true == 1", False),
        ('["a", "b"] == ["a", "b"]', True),
        ('["a"] == ["a", "b"]', False),
        ("[] == []", True),
        ("[1, [true]] == [1, [true]]", True),
        # strings: either quote, with escapes
        ("'single' == \"single\"", True),
        ('"a\\"b" == \'a"b\'', True),
        ('"tab\\there" == "tab\there"', True),
        # includes: arrays by strict equality or regex, strings by substring
        ('["eggs", "ham", "coffee"] includes "ham"', True),
        ('["eggs", "ham", "coffee"] includes "fruit"', False),
        ('[1, 2] includes "1"', False),
        ('["deploy", "platform"] includes /dep/', True),
        ('"haystack" includes "st"', True),
        ('"haystack" includes "needle"', False),
        ('"HayStack" includes /stack/i', True),
        ('"haystack" includes null', False),
        # logic; null counts as false where a boolean is needed
        ("!false", True),
        ("!null", True),
        ("true && null", False),
        ("null || true", True),
        # ternaries: right-associative, and a null result counts as false
        ("true ? null : true", False),
        ("false ? true : null", False),
        ("1 == 2 ? 3 == 4 : 5 == 5", True),
        ("1 == 1 ? 3 == 4 : 5 == 5", False),
        ("false ? true : false ? true : true", True),
        ('(false ? ["x"] : ["deploy"]) includes "deploy"', True),
        # precedence: ! > comparison > && > || > ternary
        ("!null == false", False),  # (!null) == false; !(null == false) would be true
        ("true || false && false", True),  # true || (false && false)
        ("false && false || true", True),  # (false && false) || true
        ('"a" == "d" || "a" == "b" && "a" == "a"', False),
        ('("a" == "d" || "a" == "b") && "a" == "a"', False),
        ("true || false ? false : true", False),  # (true || false) ? false : true
        ("((true))", True),
        # comments
        ("true // always", True),
        ("// leading comment\ntrue\n// trailing comment", True),
        ("true // false &&\n&& true", True),
    ],
)
def test_values_and_operators(text: str, expected: bool) -> None:
    assert run(text) is expected


# --- variables ----------------------------------------------------------------------------------

FULL = BuildFacts(
    branch="main",
    commit="abc123",
    message="Fix the thing\n\n[skip tests]",
    source="webhook",
    tag="v1.2.0",
    state="failed",
    id="0190-build",
    number=42,
    creator_name="Ada",
    creator_email="ada@example.com",
    env={"DEPLOY": "yes", "EMPTY": ""},
    pull_request={
        "id": 7,
        "base_branch": "main",
        "repository": "git@github.com:acme/fork.git",
        "draft": False,
        "labels": ["ok", "ci"],
    },
    pipeline_slug="web",
    pipeline_id="pipe-1",
    pipeline_default_branch="main",
    pipeline_repository="git@github.com:acme/web.git",
)


@pytest.mark.parametrize(
    "text",
    [
        'build.branch == "main"',
        'build.commit == "abc123"',
        "build.message =~ /^Fix/",
        'build.source == "webhook"',
        'build.tag == "v1.2.0"',
        "build.tag != null",
        'build.state == "failed"',
        "build.state != 'passed'",
        'build.id == "0190-build"',
        "build.number == 42",
        'build.creator.name == "Ada"',
        "build.creator.email =~ /@example\\.com$/",
        'build.pull_request.id == "7"',
        "build.pull_request.base_branch == pipeline.default_branch",
        "build.pull_request.repository =~ /fork/",
        "build.pull_request.draft == false",
        'build.pull_request.labels includes "ok"',
        'build.pull_request.labels == ["ok", "ci"]',
        'pipeline.slug == "web"',
        'pipeline.id == "pipe-1"',
        'pipeline.repository == "git@github.com:acme/web.git"',
        'build.env("DEPLOY") == "yes"',
        'env("DEPLOY") == "yes"',
        'build.env("EMPTY") == ""',
    ],
)
def test_every_variable_reads_its_fact(text: str) -> None:
    assert parse_condition(text).evaluate(FULL) is True


@pytest.mark.parametrize(
    "text",
    [
        "build.tag == null",
        "build.pull_request.id == null",
        "build.pull_request.labels == null",
        "!build.pull_request.draft",
        'build.env("X") == null',
        'env("X") == ""',
        '!(build.pull_request.labels includes "ok")',
    ],
)
def test_missing_facts_are_null_except_env(text: str) -> None:
    """No tag, no PR, no X: `build.env` gives null where `env` gives ""."""
    assert run(text) is True


def test_env_functions_differ_only_when_unset() -> None:
    assert run('build.env("X") == ""') is False
    assert run('env("X") == null') is False
    assert run('build.env("X") == env("X")', env={"X": "v"}) is True


def test_message_skip_marker_fixture_form() -> None:
    condition = parse_condition("build.message !~ /skip tests/")
    assert condition.evaluate(BuildFacts(message="Add feature")) is True
    assert condition.evaluate(BuildFacts(message="WIP [skip tests]")) is False


# --- regexes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "branch", "expected"),
    [
        ("build.branch =~ /^release-/", "release-1.0", True),
        ("build.branch =~ /^release-/", "pre-release-1.0", False),
        ("build.branch !~ /^release-/", "main", True),
        ("build.branch =~ /^MAIN$/", "main", False),
        ("build.branch =~ /^MAIN$/i", "main", True),
        ("build.branch =~ /^feature\\/x/", "feature/x-1", True),
        ("build.branch =~ /^a\\/\\/b$/", "a//b", True),  # escaped slashes are not a comment
        ("build.branch =~ /main|develop/ // either one", "develop", True),
        ("build.branch =~ /\\d+/", "v12", True),
        ('build.branch =~ "^rel"', "release", True),  # a string is compiled as a regex
        ('build.branch =~ "\\d"', "v1", True),  # unknown string escapes keep their backslash
        ('build.branch =~ env("PATTERN")', "hotfix-2", True),
    ],
)
def test_regex_matching(text: str, branch: str, expected: bool) -> None:
    assert run(text, branch=branch, env={"PATTERN": "^hotfix-"}) is expected


# --- ${...}: expanded lazily --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('${notset:-fallback} == "fallback"', True),
        ('${BRANCH} == "main"', True),
        ('$BRANCH == "main"', True),
        ('${notset} == ""', True),  # an expansion is always a string, never null
        ('${A:-${B:-nested}} == "nested"', True),
        ('${BRANCH:0:2} == "ma"', True),
        ('false && ${notset:?} == "x"', False),
        ('true || ${notset:?} == "x"', True),
        ('false ? ${notset:?} == "x" : true', True),
        ("null =~ ${notset:?}", False),
    ],
)
def test_shell_expansion(text: str, expected: bool) -> None:
    assert run(text, env={"BRANCH": "main"}) is expected


def test_shell_expansion_error_is_raised_when_reached() -> None:
    assert run_problem('true && ${notset:?} == "x"') == "column 9: $notset: not set"


# --- build.state is an enum ---------------------------------------------------------------------


@pytest.mark.parametrize("state", sorted(STATES))
def test_every_allowed_state_can_be_compared(state: str) -> None:
    condition = parse_condition(f'build.state == "{state}"')
    assert condition.evaluate(BuildFacts(state=state)) is True
    assert condition.evaluate(BuildFacts(state="other")) is False


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('"passed" == build.state', "column 13: build.state must be on the left"),
        ('build.state == "bogus"', "column 16: unknown build state 'bogus'; expected one of"),
        ("build.state =~ /pass/", "column 13: build.state can only be compared with == or !="),
        ('build.state == env("S")', "column 16: build.state must be compared with a quoted state"),
        ('["passed"] includes build.state', "column 21: build.state must be on the left"),
        ("build.state", "column 1: build.state can only be used as"),
        ('true && [build.state] == ["passed"]', "column 10: build.state can only be used as"),
    ],
)
def test_bad_state_comparisons_fail_at_parse(text: str, problem: str) -> None:
    assert parse_problem(text).startswith(problem)


# --- parse errors name the column ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('missing.value == "x"', "column 1: unknown variable 'missing.value'"),
        ('false && missing.value == "x"', "column 10: unknown variable 'missing.value'"),
        ('true ? true : missing.value == "x"', "column 15: unknown variable 'missing.value'"),
        ('build.branchh == "x"', "column 1: unknown variable 'build.branchh'; did you mean"),
        ('shout("x")', "column 1: unknown function 'shout'"),
        ("env()", "column 4: env() takes one argument"),
        ("env(1) == null", "column 5: env() takes a string"),
        ('build.branch == "main', "column 17: unclosed string"),
        ("build.branch == 'main", "column 17: unclosed string"),
        ('(build.branch == "main"', "column 1: '(' is never closed"),
        ('["a", "b"', "column 1: '[' is never closed"),
        ('("a" == "a"]', "column 12: expected ')', found ']'"),
        ("true false", "column 6: unexpected 'false' after a complete condition"),
        ('build.branch == "a" "b"', "column 21: unexpected string 'b' after a complete condition"),
        ("", "column 1: the condition is empty"),
        ("   // only a comment", "column 1: the condition is empty"),
        ('build.branch = "main"', "column 14: unexpected character '='; did you mean '=='?"),
        ("true & false", "column 6: unexpected character '&'; did you mean '&&'?"),
        ("build.branch == ", "column 17: expected a value, found the end of the expression"),
        ("true && )", "column 9: expected a value, found ')'"),
        ('/x/ == "x"', "column 1: a regex can only be the right side of =~, !~ or includes"),
        ("build.branch =~ /x/g", "column 20: unsupported regex flags 'g'"),
        ("build.branch =~ /(/", "column 17: invalid regex /(/"),
        ("build.branch =~ /abc", "column 17: unclosed regex"),
        ('${X == "x"', "column 1: unclosed '${'"),
        ("$ == 1", "column 1: unexpected '$'"),
        ("1 == 1 == 1", "column 8: comparisons can't be chained"),
        ("true ? false", "column 13: expected the ':' of a '?'"),
        ('"x" == "x" // fine\n&& nope', "line 2, column 4: unknown variable 'nope'"),
        ("(" * 60 + "true" + ")" * 60, "column 51: the condition is nested too deeply"),
        ("!" * 60 + "true", "column 50: the condition is nested too deeply"),
        ("false ? true : " * 60 + "true", "column 744: the condition is nested too deeply"),
    ],
)
def test_parse_errors(text: str, problem: str) -> None:
    assert parse_problem(text).startswith(problem)


# --- runtime errors: types that cannot be checked before the build ------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('"str"', "column 1: the condition must be true or false, not the string 'str'"),
        ("build.number", "column 1: the condition must be true or false, not the integer 0"),
        ('["a"]', "column 1: the condition must be true or false, not an array"),
        ('true ? "yes" : "no"', "column 6: the condition must be true or false"),
        ('"x" && true', "column 1: && needs true, false or null, not the string 'x'"),
        ("false || 1", "column 10: || needs true, false or null, not the integer 1"),
        ('!"x"', "column 2: ! needs true, false or null"),
        ('"x" ? true : false', "column 1: ? needs true, false or null"),
        ("build.number =~ /4/", "column 14: =~ needs a string on the left, not the integer 0"),
        ("build.branch =~ 1", "column 17: expected a regex or a string, not the integer 1"),
        ('build.branch !~ env("P")', "column 17: invalid regex '('"),
        ("build.number includes 1", "column 14: includes needs an array or a string"),
        ('"abc" includes 1', "column 7: includes on a string needs a string, not the integer 1"),
        ('env(build.number) == ""', "column 5: env() takes a string, not the integer 0"),
    ],
)
def test_runtime_errors(text: str, problem: str) -> None:
    assert run_problem(text, env={"P": "("}).startswith(problem)


# --- the Condition object -----------------------------------------------------------------------


@pytest.mark.parametrize(("op", "expected"), [("&&", False), ("||", True)])
def test_long_chains_do_not_recurse(op: str, expected: bool) -> None:
    text = f" {op} ".join(["true"] * 2000 + ["false"])
    assert run(text) is expected


def test_condition_is_reusable_across_builds() -> None:
    condition = parse_condition('build.branch == "main" && build.tag == null')
    assert condition.evaluate(BuildFacts(branch="main")) is True
    assert condition.evaluate(BuildFacts(branch="main", tag="v1")) is False
    assert condition.evaluate(BuildFacts(branch="dev")) is False


def test_condition_keeps_its_text_and_compares_by_it() -> None:
    text = 'build.branch == "main"'
    condition = parse_condition(text)
    assert isinstance(condition, Condition)
    assert condition.text == text
    assert condition == parse_condition(text)
    assert hash(condition) == hash(parse_condition(text))
    assert condition != parse_condition("true")
    assert repr(condition) == f"Condition({text!r})"


def test_errors_are_pipeline_errors_with_a_problem() -> None:
    with pytest.raises(PipelineError) as caught:
        parse_condition("missing.value")
    assert caught.value.problem == "column 1: unknown variable 'missing.value'"
    assert str(caught.value) == "<pipeline>: column 1: unknown variable 'missing.value'"
