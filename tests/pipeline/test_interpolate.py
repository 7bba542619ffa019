"""Upload-time env interpolation: the expansion language, the pipeline env, whole documents."""

from __future__ import annotations

import textwrap

import pytest

from conveyor.errors import PipelineError
from conveyor.pipeline.interpolate import MAX_NESTING, expand, expand_env, interpolate_document
from conveyor.pipeline.loader import MapNode, Mark, Node, ScalarNode, SeqNode, load_yaml, to_plain

OPS = "expected '}', ':-', '-', ':?', '?' or ':'"
SHA = "1adf998e39f647b4b25842f107c6ed9d30a3a7c7"

LOOKUP = {
    "A": "alpha",
    "B": "beta",
    "EMPTY": "",
    "COMMIT": SHA,
    "BUILDKITE_COMMIT": "cfeeee3fa7fa1a6311723f5cbff95b738ec6e683",
    "BUILDKITE_PARALLEL_JOB": "456",
    "ENV_VAR_FRIEND": "friend",
    "NESTED": "Only one level of $A interpolation",
}


def load(text: str) -> Node:
    node = load_yaml(textwrap.dedent(text), filename="p.yml")
    assert node is not None
    return node


def interpolate(
    text: str, runtime: dict[str, str] | None = None, *, prefer_runtime: bool = False
) -> tuple[object, dict[str, str]]:
    """The document as plain data once interpolated, and the lookup."""
    tree, lookup = interpolate_document(
        load(text), runtime or {}, filename="p.yml", prefer_runtime=prefer_runtime
    )
    return to_plain(tree), lookup


def failure(text: str, lookup: dict[str, str] | None = None) -> PipelineError:
    with pytest.raises(PipelineError) as info:
        expand(text, LOOKUP if lookup is None else lookup)
    return info.value


# --- expand: names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("plain text", "plain text"),
        ("A", "A"),
        ("$A", "alpha"),
        ("${A}", "alpha"),
        ("my$A", "myalpha"),
        ("$A, $B and ${A}", "alpha, beta and alpha"),
        ("[$NOT_SET]", "[]"),
        ("[${NOT_SET}]", "[]"),
        ("$a ${b}", " "),  # names are case-sensitive
        ("${ENV_VAR_friend}", ""),
        ("test_$BUILDKITE_COMMIT_$BUILDKITE_PARALLEL_JOB", "test_456"),  # greedy names
        ("t-$BUILDKITE_COMMIT-$BUILDKITE_PARALLEL_JOB", f"t-{LOOKUP['BUILDKITE_COMMIT']}-456"),
        ("t_${BUILDKITE_COMMIT}_${BUILDKITE_PARALLEL_JOB}", f"t_{LOOKUP['BUILDKITE_COMMIT']}_456"),
        ("$NESTED", "Only one level of $A interpolation"),  # values are not expanded again
        ("${NESTED}", "Only one level of $A interpolation"),
        ("$Ä1", "umlaut"),  # Unicode letters and digits make names too
    ],
)
def test_variables(text: str, expected: str) -> None:
    assert expand(text, {**LOOKUP, "Ä1": "umlaut"}) == expected


@pytest.mark.parametrize(
    "text",
    [
        "$",
        "cost: $",
        "a $ b",
        "$1 burgers",
        "$99bottles",
        "$_underscore",
        "$(echo hello world)",
        "$(",
        "{{matrix}} and {{ matrix.os }}",
        "braces } alone {",
        "back\\slash",
    ],
)
def test_text_without_expansions_is_left_alone(text: str) -> None:
    assert expand(text, LOOKUP) == text


def test_command_substitution_contents_are_still_expanded() -> None:
    assert expand("$(echo $A) ${B}", LOOKUP) == "$(echo alpha) beta"


# --- expand: defaults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${NOT_SET:-w}", "w"),
        ("${NOT_SET-w}", "w"),
        ("${EMPTY:-w}", "w"),
        ("${EMPTY-w}", ""),  # `-` only replaces unset, `:-` also replaces empty
        ("${A:-w}", "alpha"),
        ("${A-w}", "alpha"),
        ("${NOT_SET:-}", ""),
        ("${EMPTY:-127}", "127"),
        ("${X:-${Y:-$A}}", "alpha"),
        ("${X:-${B:-$A}}", "beta"),
        ("${X:-Some text ${B:-$A} with $A}", "Some text beta with alpha"),
        ("${EMPTY:-${X-test}}", "test"),
        ("${EMPTY:--:{}}", "-:{}"),  # the default ends at the first `}`
        ("${X:- spaced }", " spaced "),
        ("${A:-${X:?never evaluated}}", "alpha"),
    ],
)
def test_defaults(text: str, expected: str) -> None:
    assert expand(text, LOOKUP) == expected


# --- expand: required ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("${X:?msg}", "$X: msg"),
        ("${X?msg}", "$X: msg"),
        ("Hello ${X?}", "$X: not set"),
        ("${X:?}", "$X: not set"),
        ("${EMPTY:?}", "$EMPTY: empty"),
        ("${EMPTY:?give me a value}", "$EMPTY: give me a value"),
        ("${X?y u no set me? :-{}", "$X: y u no set me? :-{"),
        ("${X?{}}", "$X: {"),
        ("${X?needed by $A}", "$X: needed by alpha"),
        ("${X:-${Y?inner}}", "$Y: inner"),
    ],
)
def test_required(text: str, problem: str) -> None:
    error = failure(text)
    assert error.problem == problem
    assert (error.line, error.column) == (None, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("${A?}", "alpha"), ("${A:?msg}", "alpha"), ("[${EMPTY?}]", "[]")],
)
def test_required_when_set(text: str, expected: str) -> None:
    assert expand(text, LOOKUP) == expected


# --- expand: substrings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${COMMIT:0:7}", SHA[:7]),
        ("${COMMIT:7}", SHA[7:]),
        ("${COMMIT:0}", SHA),
        ("${COMMIT: -7}", SHA[-7:]),  # the space is required ...
        ("${COMMIT:-7}", SHA),  # ... or it is a default
        ("${COMMIT:7:7}", SHA[7:14]),
        ("${COMMIT:7:-7}", SHA[7:-7]),
        ("${COMMIT: -128}", SHA),
        ("${COMMIT:128}", ""),
        ("${COMMIT:40}", ""),
        ("${COMMIT:0:0}", ""),
        ("${COMMIT:7:0}", ""),
        ("${COMMIT:0:128}", SHA),
        ("${COMMIT:7:128}", SHA[7:]),
        ("${COMMIT:0:-128}", ""),
        ("${COMMIT:7:-128}", ""),
        ("${COMMIT: +3 : 2 }", SHA[3:5]),
        ("${NOT_SET:0:7}", ""),
        ("${NOT_SET:7}", ""),
    ],
)
def test_substrings(text: str, expected: str) -> None:
    assert expand(text, LOOKUP) == expected


def test_substrings_count_characters() -> None:
    assert expand("${S:1:2}", {"S": "héllo"}) == "él"


# --- expand: escapes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Do this $$A", "Do this $A"),
        ("Do this \\$A", "Do this $A"),
        ("Do this $${A}", "Do this ${A}"),
        ("Do this \\${A}", "Do this ${A}"),
        ("'xi$$'", "'xi$'"),
        ("$${X:-$B}", "${X:-beta}"),  # only the `$$` is escaped; `$B` still expands
        ("if [[ $$f =~ ^v$$ ]]", "if [[ $f =~ ^v$ ]]"),
        ("echo $${f/linux/manylinux1}", "echo ${f/linux/manylinux1}"),
        ("\\\\$A", "\\\\alpha"),  # an escaped backslash is kept, and the `$` after it expands
        ("\\\\\\$A", "\\\\$A"),
        ("$$$A", "$alpha"),
        ("${X:-\\$A}", "$A"),
        ("${X:-$$}", "$"),
    ],
)
def test_escapes(text: str, expected: str) -> None:
    assert expand(text, LOOKUP) == expected


# --- expand: syntax errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("echo ${A", "unterminated expansion '${A': no closing '}'"),
        ("${", "unterminated expansion '${': no closing '}'"),
        ("${A:-default", "unterminated expansion '${A:-default': no closing '}'"),
        ("${A:-${B}", "unterminated expansion '${A:-${B}': no closing '}'"),
        ("${A:0", "unterminated expansion '${A:0': no closing '}'"),
        ("${A:0:7", "unterminated expansion '${A:0:7': no closing '}'"),
        ("${1}", "invalid expansion '${1}': a variable name must start with a letter"),
        ("${}", "invalid expansion '${}': a variable name must start with a letter"),
        ("${A%.*}", f"invalid expansion '${{A%.*}}': unexpected '%' after the name; {OPS}"),
        ("${A B}", f"invalid expansion '${{A B}}': unexpected ' ' after the name; {OPS}"),
        ("${A B", "unterminated expansion '${A B': no closing '}'"),
        (
            "${A:x}",
            "invalid expansion '${A:x}': the substring offset must be a whole number, got 'x'",
        ),
        (
            "${A:1:}",
            "invalid expansion '${A:1:}': the substring length must be a whole number, got ''",
        ),
        (
            "${A:-${B:?a}}${" + "X" * 60,
            "unterminated expansion '${XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX...': no closing '}'",
        ),
    ],
)
def test_syntax_errors(text: str, problem: str) -> None:
    assert failure(text).problem == problem


def test_syntax_errors_are_found_in_unused_defaults() -> None:
    assert failure("${A:-${1}}").problem.startswith("invalid expansion '${1}'")


def test_nesting_is_limited() -> None:
    deep = "${X:-" * (MAX_NESTING + 1) + "}" * (MAX_NESTING + 1)
    assert failure(deep).problem == f"expansions are nested more than {MAX_NESTING} deep"
    ok = "${X:-" * MAX_NESTING + "end" + "}" * MAX_NESTING
    assert expand(ok, {}) == "end"


# --- expand_env ---------------------------------------------------------------------------------


def test_env_entries_see_earlier_ones_and_the_runtime() -> None:
    env = {
        "TEAM1": "England",
        "TEAM2": "Australia",
        "HEADLINE": "${TEAM1} smashes ${TEAM2} in ${YEAR}",
    }
    expanded, lookup = expand_env(env, {"YEAR": "2021"})
    assert expanded == {
        "TEAM1": "England",
        "TEAM2": "Australia",
        "HEADLINE": "England smashes Australia in 2021",
    }
    assert lookup == {**expanded, "YEAR": "2021"}
    assert expand("echo ${HEADLINE}", lookup) == "echo England smashes Australia in 2021"


def test_env_keys_are_expanded() -> None:
    env = {"${FROM_ENV}TEST1": "x", "K": "$llamasTEST1"}
    expanded, lookup = expand_env(env, {"FROM_ENV": "llamas"})
    assert expanded == {"llamasTEST1": "x", "K": "x"}
    assert lookup["llamasTEST1"] == "x"


@pytest.mark.parametrize(
    ("prefer_runtime", "message"), [(False, "hello foe"), (True, "hello friend")]
)
def test_env_precedence(prefer_runtime: bool, message: str) -> None:
    env = {"ENV_VAR_FRIEND": "foe", "MSG": "hello ${ENV_VAR_FRIEND}"}
    runtime = {"ENV_VAR_FRIEND": "friend"}
    expanded, lookup = expand_env(env, runtime, prefer_runtime=prefer_runtime)
    assert expanded == {"ENV_VAR_FRIEND": "foe", "MSG": message}  # the pipeline's own value stays
    assert lookup["MSG"] == message
    assert lookup["ENV_VAR_FRIEND"] == ("friend" if prefer_runtime else "foe")
    assert runtime == {"ENV_VAR_FRIEND": "friend"}  # not modified


@pytest.mark.parametrize(
    ("env", "bar"),
    [
        ({"BAR": "$FOO", "FOO": "pipeline_foo"}, "runtime_foo"),
        ({"FOO": "pipeline_foo", "BAR": "$FOO"}, "pipeline_foo"),
    ],
)
def test_env_order_matters(env: dict[str, str], bar: str) -> None:
    expanded, lookup = expand_env(env, {"FOO": "runtime_foo"})
    assert expanded["BAR"] == bar
    assert lookup["FOO"] == "pipeline_foo"


def test_prefer_runtime_still_adds_new_names() -> None:
    expanded, lookup = expand_env({"NEW": "n", "USE": "$NEW"}, {"OLD": "o"}, prefer_runtime=True)
    assert expanded == {"NEW": "n", "USE": "n"}
    assert lookup == {"OLD": "o", "NEW": "n", "USE": "n"}


def test_env_names_that_collide_once_expanded_are_an_error() -> None:
    with pytest.raises(PipelineError, match="env name 'AB' appears twice"):
        expand_env({"AB": "1", "A${X}B": "2"}, {})


def test_env_errors_are_plain_problems() -> None:
    with pytest.raises(PipelineError) as info:
        expand_env({"A": "${NEEDED?}"}, {})
    assert info.value.problem == "$NEEDED: not set"


# --- interpolate_document -----------------------------------------------------------------------


def test_document_env_goes_first_and_feeds_the_steps() -> None:
    data, lookup = interpolate(
        """\
        steps:
          - command: echo ${HEADLINE}
            label: ":cricket: $TEAM1"
        env:
          TEAM1: England
          TEAM2: Australia
          HEADLINE: "${TEAM1} smashes ${TEAM2} in ${YEAR}"
        """,
        {"YEAR": "2021"},
    )
    headline = "England smashes Australia in 2021"
    assert data == {
        "steps": [{"command": f"echo {headline}", "label": ":cricket: England"}],
        "env": {"TEAM1": "England", "TEAM2": "Australia", "HEADLINE": headline},
    }
    assert lookup["HEADLINE"] == headline
    assert lookup["YEAR"] == "2021"
    assert isinstance(data, dict) and list(data) == ["steps", "env"]  # written order kept


@pytest.mark.parametrize(
    ("prefer_runtime", "command"), [(False, "echo Hi bob"), (True, "echo Hi alice")]
)
def test_document_precedence(prefer_runtime: bool, command: str) -> None:
    data, _ = interpolate(
        """\
        env:
          NAME: bob
          GREETING: "Hi ${NAME}"
        steps:
          - command: echo $GREETING
        """,
        {"NAME": "alice"},
        prefer_runtime=prefer_runtime,
    )
    assert data == {
        "env": {"NAME": "bob", "GREETING": command.removeprefix("echo ")},
        "steps": [{"command": command}],
    }


def test_document_keys_values_and_unmodelled_fields_are_expanded() -> None:
    data, _ = interpolate(
        """\
        env:
          "${FROM_ENV}TEST1": llamas
        agents:
          queue: $QUEUE
        steps:
          - label: "${LABEL:-default label}"
            key: build-$PART
            if: build.branch =~ /^main\\$/ && build.env("X") == "$PART"
            commands:
              - make $PART
              - "echo $$HOME"
            plugins:
              - ecr#$ECR_PLUGIN_VER:
                  login: true
                  account_ids: ["$ACCOUNT"]
            matrix:
              setup:
                ${DIM}: ["$PART", "{{matrix.os}}"]
            env:
              ${FROM_ENV}_VAR: $llamasTEST1
          - trigger: deploy
            build:
              message: "$BUILDKITE_MESSAGE"
          - group: "Group $PART"
            steps: [{command: "echo {{matrix}}"}]
        """,
        {
            "FROM_ENV": "llamas",
            "QUEUE": "linux",
            "PART": "one",
            "ECR_PLUGIN_VER": "v2.7.0",
            "ACCOUNT": "123",
            "DIM": "os",
            "BUILDKITE_MESSAGE": "hi",
        },
    )
    assert data == {
        "env": {"llamasTEST1": "llamas"},
        "agents": {"queue": "linux"},
        "steps": [
            {
                "label": "default label",
                "key": "build-one",
                "if": 'build.branch =~ /^main$/ && build.env("X") == "one"',
                "commands": ["make one", "echo $HOME"],
                "plugins": [{"ecr#v2.7.0": {"login": True, "account_ids": ["123"]}}],
                "matrix": {"setup": {"os": ["one", "{{matrix.os}}"]}},
                "env": {"llamas_VAR": "llamas"},
            },
            {"trigger": "deploy", "build": {"message": "hi"}},
            {"group": "Group one", "steps": [{"command": "echo {{matrix}}"}]},
        ],
    }


def test_a_step_env_does_not_feed_its_other_fields() -> None:
    data, lookup = interpolate(
        """\
        steps:
          - command: echo "[$LOCAL]"
            env:
              LOCAL: step value
              COPY: $LOCAL
          - command: echo "[$LOCAL]"
        """
    )
    assert data == {
        "steps": [
            {"command": 'echo "[]"', "env": {"LOCAL": "step value", "COPY": ""}},
            {"command": 'echo "[]"'},
        ]
    }
    assert "LOCAL" not in lookup


def test_signature_is_never_expanded() -> None:
    data, _ = interpolate(
        """\
        steps:
          - command: echo $A
            signature:
              algorithm: EdDSA
              signed_fields: [command, env::$A]
              value: "${A}..$$.${BROKEN"
        """,
        {"A": "x"},
    )
    assert data == {
        "steps": [
            {
                "command": "echo x",
                "signature": {
                    "algorithm": "EdDSA",
                    "signed_fields": ["command", "env::$A"],
                    "value": "${A}..$$.${BROKEN",
                },
            }
        ]
    }


def test_bare_list_form() -> None:
    tree, lookup = interpolate_document(
        load("- command: echo $A\n- wait\n- {command: 'x', parallelism: 2}\n"), {"A": "a"}
    )
    assert isinstance(tree, SeqNode)
    assert to_plain(tree) == [{"command": "echo a"}, "wait", {"command": "x", "parallelism": 2}]
    assert lookup == {"A": "a"}


def test_non_strings_and_marks_are_kept() -> None:
    root = load(
        """\
        env:
          N: 42
          T: true
          F: 2.5
          Z: null
          SHOW: "$N $T $F [$Z]"
        steps:
          - command: echo $SHOW
            parallelism: 3
            soft_fail: false
            timeout_in_minutes: ~
        """
    )
    tree, lookup = interpolate_document(root, {})
    assert to_plain(tree) == {
        "env": {"N": 42, "T": True, "F": 2.5, "Z": None, "SHOW": "42 true 2.5 []"},
        "steps": [
            {
                "command": "echo 42 true 2.5 []",
                "parallelism": 3,
                "soft_fail": False,
                "timeout_in_minutes": None,
            }
        ],
    }
    assert lookup == {"N": "42", "T": "true", "F": "2.5", "Z": "", "SHOW": "42 true 2.5 []"}
    assert isinstance(tree, MapNode) and isinstance(root, MapNode)
    steps = tree.entries["steps"].value
    assert isinstance(steps, SeqNode)
    step = steps.items[0]
    assert isinstance(step, MapNode)
    assert step.mark == Mark(8, 5)
    assert step.entries["command"].key_mark == Mark(8, 5)
    assert step.entries["command"].value == ScalarNode("echo 42 true 2.5 []", Mark(8, 14))
    assert step.entries["parallelism"].value == ScalarNode(3, Mark(9, 18))
    env = tree.entries["env"].value
    assert isinstance(env, MapNode)
    assert env.entries["SHOW"].key_mark == Mark(6, 3)
    assert to_plain(root)["steps"][0]["command"] == "echo $SHOW"  # the input is not changed


@pytest.mark.parametrize("env", ["env:\n", "env: null\n", "env: {}\n", ""])
def test_no_env(env: str) -> None:
    data, lookup = interpolate(env + "steps:\n  - command: echo [$A]\n", {"A": "a"})
    assert isinstance(data, dict)
    assert data["steps"] == [{"command": "echo [a]"}]
    assert lookup == {"A": "a"}


@pytest.mark.parametrize(
    ("text", "line", "column", "problem"),
    [
        ("steps:\n  - command: echo ${NEEDED?}\n", 2, 14, "$NEEDED: not set"),
        ("steps:\n  - label: x\n    command: |\n      echo ${A\n", 3, 14, "unterminated"),
        ("steps:\n  - command: x\n    env:\n      ${X:?no key}: v\n", 4, 7, "$X: no key"),
        ("env:\n  A: 1\n  B: ${C:?C is needed}\nsteps: []\n", 3, 6, "$C: C is needed"),
        ("env:\n  ${1}: x\nsteps: []\n", 2, 3, "invalid expansion '${1}'"),
        ("- command: x\n- {label: '${L:x}'}\n", 2, 11, "substring offset"),
        ("env: [A=1]\nsteps: []\n", 1, 6, "'env' must be a mapping of names to values, got a list"),
        ("env:\n  A: [1]\n", 2, 6, "env value 'A' must be a string, number or boolean, got a list"),
        ("steps:\n  - {AB: 1, 'A${X}B': 2}\n", 2, 13, "key 'AB' appears twice once variables"),
        ("env:\n  AB: 1\n  A${X}B: 2\n", 3, 3, "key 'AB' appears twice once variables"),
    ],
)
def test_document_errors_point_at_the_node(text: str, line: int, column: int, problem: str) -> None:
    root = load_yaml(text, filename="p.yml")
    assert root is not None
    with pytest.raises(PipelineError) as info:
        interpolate_document(root, {}, filename="p.yml")
    error = info.value
    assert (error.file, error.line, error.column) == ("p.yml", line, column)
    assert problem in error.problem
    assert str(error) == f"p.yml:{line}:{column}: {error.problem}"


def test_document_error_message_in_full() -> None:
    root = load_yaml("steps:\n  - command: echo ${NEEDED:?set NEEDED first}\n", filename="p.yml")
    assert root is not None
    with pytest.raises(PipelineError) as info:
        interpolate_document(root, {}, filename="p.yml")
    assert str(info.value) == "p.yml:2:14: $NEEDED: set NEEDED first"


def test_default_filename() -> None:
    with pytest.raises(PipelineError) as info:
        interpolate_document(ScalarNode("${X?}", Mark(1, 1)), {})
    assert str(info.value) == "<pipeline>:1:1: $X: not set"
