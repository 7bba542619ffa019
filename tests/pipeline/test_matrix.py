"""Build matrices: reading `matrix:`, expanding it to jobs, and substituting {{matrix}} tokens."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conveyor.errors import PipelineError
from conveyor.pipeline.context import Context
from conveyor.pipeline.loader import MapNode, Node, SeqNode, load_yaml, to_plain
from conveyor.pipeline.matrix import (
    MAX_JOBS,
    SKIP_REASON_MAX_LENGTH,
    Adjustment,
    Matrix,
    MatrixJob,
    check_tokens,
    has_token,
    label_suffix,
    read_matrix,
    substitute,
)

FIXTURE = Path("/work/shared/conformance/pipeline-schema/valid-pipelines/matrix.yml")


def step_node(text: str) -> MapNode:
    node = load_yaml(textwrap.dedent(text), filename="p.yml")
    assert isinstance(node, MapNode)
    return node


def read(text: str, ctx: Context | None = None) -> Matrix:
    step = step_node(text)
    entry = step.get("matrix")
    assert entry is not None
    return read_matrix(ctx or Context("p.yml"), entry)


def read_error(text: str) -> PipelineError:
    with pytest.raises(PipelineError) as info:
        read(text)
    return info.value


def check(text: str) -> None:
    """Read the step's matrix and check the tokens of the whole step."""
    ctx = Context("p.yml")
    step = step_node(text)
    entry = step.get("matrix")
    assert entry is not None
    check_tokens(ctx, read_matrix(ctx, entry), step)


def check_error(text: str) -> PipelineError:
    with pytest.raises(PipelineError) as info:
        check(text)
    return info.value


def values(matrix: Matrix) -> list[dict[str, str]]:
    return [job.values for job in matrix.jobs()]


def where(error: PipelineError) -> tuple[int | None, int | None]:
    return error.line, error.column


# --- forms -----------------------------------------------------------------------------------


def test_bare_list_is_one_unnamed_dimension_of_strings() -> None:
    matrix = read("matrix: [apple, 47, true]\n")
    assert matrix.named is False
    assert matrix.dimensions == {"": ("apple", "47", "true")}
    assert matrix.adjustments == ()
    assert values(matrix) == [{"": "apple"}, {"": "47"}, {"": "true"}]


def test_values_are_formatted_the_go_way() -> None:
    matrix = read("matrix: [2.5, 1.0e+6, 0x2A, false, yes, '007']\n")
    assert matrix.dimensions[""] == ("2.5", "1e+06", "42", "false", "yes", "007")


def test_setup_list_is_the_same_as_a_bare_list() -> None:
    bare = read("matrix: [one, two]\n")
    setup = read("matrix:\n  setup: [one, two]\n")
    assert setup == bare
    assert values(setup) == [{"": "one"}, {"": "two"}]


def test_setup_list_adjustment_with_a_scalar_adds_a_job() -> None:
    matrix = read(
        """\
        matrix:
          setup: [one, two]
          adjustments:
            - with: three
            - with: 4
        """
    )
    assert matrix.adjustments == (
        Adjustment(values={"": "three"}),
        Adjustment(values={"": "4"}),
    )
    assert values(matrix) == [{"": "one"}, {"": "two"}, {"": "three"}, {"": "4"}]


def test_setup_list_adjustment_with_a_one_item_list() -> None:
    matrix = read(
        """\
        matrix:
          setup: [one, two, three]
          adjustments:
            - with: ["three"]
              skip: true
        """
    )
    assert matrix.adjustments == (Adjustment(values={"": "three"}, skip=True),)
    assert values(matrix) == [{"": "one"}, {"": "two"}]


def test_setup_map_gives_named_dimensions_first_varying_slowest() -> None:
    matrix = read(
        """\
        matrix:
          setup:
            os: [linux, darwin]
            arch: [amd64, arm64]
            test: [A]
        """
    )
    assert matrix.named is True
    assert matrix.dimensions == {
        "os": ("linux", "darwin"),
        "arch": ("amd64", "arm64"),
        "test": ("A",),
    }
    assert values(matrix) == [
        {"os": "linux", "arch": "amd64", "test": "A"},
        {"os": "linux", "arch": "arm64", "test": "A"},
        {"os": "darwin", "arch": "amd64", "test": "A"},
        {"os": "darwin", "arch": "arm64", "test": "A"},
    ]
    assert [list(v) for v in values(matrix)] == [["os", "arch", "test"]] * 4


def test_named_adjustment_values_follow_setup_order() -> None:
    matrix = read(
        """\
        matrix:
          setup:
            os: [linux]
            arch: [amd64]
          adjustments:
            - with: {arch: arm64, os: plan9}
        """
    )
    assert list(matrix.adjustments[0].values.items()) == [("os", "plan9"), ("arch", "arm64")]
    assert list(matrix.jobs()[-1].values) == ["os", "arch"]


def test_empty_dimension_is_kept_when_adjustments_supply_jobs() -> None:
    matrix = read(
        """\
        matrix:
          setup:
            os: [linux, darwin]
            arch: []
          adjustments:
            - with: {os: linux, arch: riscv}
        """
    )
    assert matrix.dimensions == {"os": ("linux", "darwin"), "arch": ()}
    assert values(matrix) == [{"os": "linux", "arch": "riscv"}]


def test_all_empty_setup_is_valid_when_adjustments_supply_the_values() -> None:
    matrix = read(
        """\
        matrix:
          setup:
            os: []
            arch: []
          adjustments:
            - with: {os: linux, arch: amd64}
            - with: {os: plan9, arch: arm64}
        """
    )
    assert values(matrix) == [
        {"os": "linux", "arch": "amd64"},
        {"os": "plan9", "arch": "arm64"},
    ]


def test_a_matrix_with_no_jobs_is_an_error() -> None:
    error = read_error(
        """\
        matrix:
          setup:
            os: [linux]
            arch: []
        """
    )
    assert "no jobs" in error.problem
    assert where(error) == (2, 3)


def test_a_matrix_whose_every_job_is_skipped_is_an_error() -> None:
    error = read_error(
        """\
        matrix:
          setup: [one]
          adjustments:
            - with: one
              skip: true
        """
    )
    assert "no jobs" in error.problem


@pytest.mark.parametrize("name", ["123color", "color_123", "OS", "_", "9"])
def test_dimension_names_of_letters_digits_and_underscores(name: str) -> None:
    matrix = read(f"matrix:\n  setup:\n    {name}: [green, blue]\n")
    assert matrix.dimensions == {name: ("green", "blue")}
    check(f"command: echo {{{{matrix.{name}}}}}\nmatrix:\n  setup:\n    {name}: [green]\n")


@pytest.mark.parametrize("name", ["a-b", "a.b", "a b", "côté", "a:b"])
def test_other_dimension_names_are_errors(name: str) -> None:
    error = read_error(f"matrix:\n  setup:\n    os: [x]\n    '{name}': ['1']\n")
    assert f"dimension name {name!r}" in error.problem
    assert "letters, digits and _" in error.problem
    assert where(error) == (4, 5)


# --- skip, extra keys and the job list ------------------------------------------------------


def test_skip_true_and_skip_reason_remove_combinations() -> None:
    matrix = read(
        """\
        matrix:
          setup:
            color: [green, blue]
            shape: [triangle, hexagon]
          adjustments:
            - with: {color: blue, shape: triangle}
              skip: true
            - with: {color: green, shape: triangle}
              skip: "look, hexagons are just better"
        """
    )
    assert [a.skip for a in matrix.adjustments] == [True, "look, hexagons are just better"]
    assert values(matrix) == [
        {"color": "green", "shape": "hexagon"},
        {"color": "blue", "shape": "hexagon"},
    ]


@pytest.mark.parametrize("skip", ["false", "null", "''"])
def test_skip_false_null_or_empty_skips_nothing(skip: str) -> None:
    matrix = read(
        f"matrix:\n  setup: [one, two]\n  adjustments:\n    - with: two\n      skip: {skip}\n"
    )
    assert matrix.adjustments[0].skip is False
    assert values(matrix) == [{"": "one"}, {"": "two"}]


def test_skip_reason_of_seventy_characters_is_the_limit() -> None:
    ok = "x" * SKIP_REASON_MAX_LENGTH
    matrix = read(f"matrix:\n  setup: [a, b]\n  adjustments:\n    - with: a\n      skip: {ok}\n")
    assert matrix.adjustments[0].skip == ok
    error = read_error(
        f"matrix:\n  setup: [a, b]\n  adjustments:\n    - with: a\n      skip: {ok}y\n"
    )
    assert "71 characters" in error.problem
    assert f"limit of {SKIP_REASON_MAX_LENGTH}" in error.problem
    assert where(error) == (5, 13)


@pytest.mark.parametrize(("skip", "shown"), [("1", "a number"), ("[a]", "a list")])
def test_skip_of_another_type_is_an_error(skip: str, shown: str) -> None:
    error = read_error(
        f"matrix:\n  setup: [a, b]\n  adjustments:\n    - with: a\n      skip: {skip}\n"
    )
    assert "'skip' must be true, false or a reason" in error.problem
    assert shown in error.problem
    assert error.line == 5


@pytest.mark.parametrize("skipped_first", [True, False])
def test_a_tuple_given_twice_is_skipped_when_either_copy_skips(skipped_first: bool) -> None:
    skipped = "    - with: {os: plan9}\n      skip: true\n"
    added = "    - with: {os: plan9}\n      soft_fail: true\n"
    both = skipped + added if skipped_first else added + skipped
    matrix = read(f"matrix:\n  setup:\n    os: [linux]\n  adjustments:\n{both}")
    assert values(matrix) == [{"os": "linux"}]
    assert matrix.job_count() == 1


def test_adjustment_may_bring_a_new_value() -> None:
    matrix = read(
        """\
        matrix:
          setup:
            os: [linux, darwin]
            arch: [amd64]
          adjustments:
            - with: {os: plan9, arch: amd64}
        """
    )
    assert values(matrix)[-1] == {"os": "plan9", "arch": "amd64"}
    assert len(matrix.jobs()) == 3


def test_adjustment_extra_keys_are_kept_per_job() -> None:
    ctx = Context("p.yml")
    matrix = read(
        """\
        matrix:
          setup:
            os: [linux, darwin]
          adjustments:
            - with: {os: darwin}
              soft_fail: true
            - with: {os: plan9}
              soft_fail:
                - exit_status: 1
        """,
        ctx,
    )
    jobs = matrix.jobs()
    assert [(j.values["os"], j.extra) for j in jobs] == [
        ("linux", {}),
        ("darwin", {"soft_fail": True}),
        ("plan9", {"soft_fail": [{"exit_status": 1}]}),
    ]
    assert ctx.warnings == []


def test_unknown_adjustment_key_is_kept_with_a_warning() -> None:
    ctx = Context("p.yml")
    matrix = read("matrix:\n  setup: [a]\n  adjustments:\n    - with: b\n      skipp: true\n", ctx)
    assert matrix.jobs()[-1] == MatrixJob({"": "b"}, {"skipp": True})
    assert len(ctx.warnings) == 1
    assert "p.yml:5:7" in ctx.warnings[0]
    assert "'skipp'" in ctx.warnings[0]


def test_worked_arithmetic_5x3_minus_2_plus_10_is_23() -> None:
    skips = [("v1", "x"), ("v2", "y")]
    adds = [(f"extra{i}", "x") for i in range(9)] + [("v1", "w")]
    adjustments = [f"    - with: {{a: {a}, b: {b}}}\n      skip: true\n" for a, b in skips]
    adjustments += [f"    - with: {{a: {a}, b: {b}}}\n" for a, b in adds]
    matrix = read(
        "matrix:\n  setup:\n    a: [v1, v2, v3, v4, v5]\n    b: [x, y, z]\n  adjustments:\n"
        + "".join(adjustments)
    )
    assert len(matrix.jobs()) == 23
    assert matrix.job_count() == 23
    assert {"a": "v1", "b": "x"} not in values(matrix)


def test_worked_arithmetic_5x2x1_plus_2_is_12() -> None:
    matrix = read(
        """\
        matrix:
          setup:
            a: [1, 2, 3, 4, 5]
            b: [x, y]
            c: [only]
          adjustments:
            - with: {a: 6, b: x, c: only}
            - with: {a: 1, b: z, c: other}
        """
    )
    assert len(matrix.jobs()) == 12
    assert matrix.job_count() == 12


def test_job_count_agrees_with_jobs_when_adjustments_repeat_setup_tuples() -> None:
    matrix = Matrix(
        dimensions={"os": ("linux", "darwin")},
        adjustments=(
            Adjustment(values={"os": "linux"}, extra={"soft_fail": True}),
            Adjustment(values={"os": "bsd"}),
            Adjustment(values={"os": "bsd"}, extra={"soft_fail": False}),
            Adjustment(values={"os": "darwin"}, skip="slow"),
            Adjustment(values={"os": "haiku"}, skip=True),
        ),
        named=True,
    )
    assert matrix.jobs() == [
        MatrixJob({"os": "linux"}, {"soft_fail": True}),
        MatrixJob({"os": "bsd"}, {"soft_fail": False}),
    ]
    assert matrix.job_count() == 2


def test_more_than_max_jobs_is_an_error() -> None:
    error = read_error(
        "command: x\nmatrix:\n  setup:\n    a: [" + ", ".join(map(str, range(MAX_JOBS + 1))) + "]\n"
    )
    assert f"gives {MAX_JOBS + 1} jobs" in error.problem
    assert f"limit of {MAX_JOBS}" in error.problem
    assert where(error) == (3, 3)  # the matrix node


def test_max_jobs_counts_after_skips() -> None:
    items = ", ".join(map(str, range(MAX_JOBS + 1)))
    matrix = read(f"matrix:\n  setup: [{items}]\n  adjustments:\n    - with: 0\n      skip: true\n")
    assert matrix.job_count() == MAX_JOBS


def test_a_huge_cross_product_is_refused_without_being_built() -> None:
    hundred = "[" + ", ".join(map(str, range(100))) + "]"
    error = read_error(
        "matrix:\n  setup:\n" + "".join(f"    {name}: {hundred}\n" for name in "abcd")
    )
    assert "gives 100000000 jobs" in error.problem


# --- errors while reading -----------------------------------------------------------------


def test_adjustment_with_unknown_dimension() -> None:
    error = read_error(
        """\
        matrix:
          setup:
            os: [linux]
            arch: [amd64]
          adjustments:
            - with: {os: linux, cpu: arm64}
        """
    )
    assert "unknown matrix dimension 'cpu'" in error.problem
    assert "'os', 'arch'" in error.problem
    assert where(error) == (6, 25)


def test_adjustment_with_fewer_dimensions() -> None:
    error = read_error(
        """\
        matrix:
          setup:
            os: [linux]
            arch: [amd64]
          adjustments:
            - with:
                os: linux
        """
    )
    assert "'with' gives 1 of the 2 matrix dimensions (missing 'arch')" in error.problem
    assert where(error) == (7, 9)


def test_unnamed_adjustment_with_several_values() -> None:
    error = read_error("matrix:\n  setup: [a]\n  adjustments:\n    - with: [a, b]\n")
    assert "'with' gives 2 values, but this matrix has 1 dimension" in error.problem
    assert where(error) == (4, 13)


def test_unnamed_adjustment_with_a_mapping() -> None:
    error = read_error("matrix:\n  setup: [a]\n  adjustments:\n    - with: {os: a}\n")
    assert "'with' must be a single value" in error.problem
    assert error.line == 4


@pytest.mark.parametrize(("with_", "shown"), [("linux", "a string"), ("[linux]", "a list")])
def test_named_adjustment_with_something_other_than_a_mapping(with_: str, shown: str) -> None:
    error = read_error(f"matrix:\n  setup:\n    os: [linux]\n  adjustments:\n    - with: {with_}\n")
    assert "'with' must be a mapping of dimension names to values" in error.problem
    assert shown in error.problem
    assert where(error) == (5, 13)


def test_adjustment_without_with() -> None:
    error = read_error("matrix:\n  setup: [a]\n  adjustments:\n    - skip: true\n")
    assert "needs 'with'" in error.problem
    assert where(error) == (4, 7)


@pytest.mark.parametrize(
    ("adjustments", "fragment", "line"),
    [
        ("adjustments: {with: a}", "'adjustments' must be a list, got a mapping", 3),
        ("adjustments: [a]", "each adjustment must be a mapping", 3),
    ],
)
def test_adjustments_of_the_wrong_shape(adjustments: str, fragment: str, line: int) -> None:
    error = read_error(f"matrix:\n  setup: [a]\n  {adjustments}\n")
    assert fragment in error.problem
    assert error.line == line


def test_null_adjustments_mean_none() -> None:
    assert read("matrix:\n  setup: [a]\n  adjustments:\n").adjustments == ()


@pytest.mark.parametrize(
    ("value", "shown"), [("linux", "a string"), ("", "null"), ("3", "a number")]
)
def test_matrix_of_the_wrong_type(value: str, shown: str) -> None:
    error = read_error(f"command: x\nmatrix: {value}\n")
    assert "'matrix' must be a list of values or a mapping with 'setup'" in error.problem
    assert shown in error.problem
    assert error.line == 2


def test_matrix_mapping_without_setup() -> None:
    error = read_error("matrix:\n  adjustments: []\n")
    assert "'matrix' needs 'setup'" in error.problem
    assert where(error) == (2, 3)


def test_dimensions_written_directly_under_matrix() -> None:
    error = read_error("matrix:\n  os: [linux, darwin]\n")
    assert "unknown key 'os' in 'matrix'" in error.problem
    assert "dimensions go under 'setup'" in error.problem
    assert where(error) == (2, 3)


@pytest.mark.parametrize(
    ("setup", "fragment", "where_"),
    [
        ("setup: {}", "'setup' must name at least one dimension", (2, 10)),
        ("setup: linux", "'setup' must be a list of values or a mapping", (2, 10)),
        ("setup:\n    os: linux", "matrix dimension 'os' must be a list of values", (3, 9)),
        ("setup:\n    os:", "matrix dimension 'os' must be a list of values, got null", (3, 5)),
    ],
)
def test_setup_of_the_wrong_shape(setup: str, fragment: str, where_: tuple[int, int]) -> None:
    error = read_error(f"matrix:\n  {setup}\n")
    assert fragment in error.problem
    assert where(error) == where_


@pytest.mark.parametrize(
    ("items", "shown", "column"), [("[a, [b]]", "a list", 14), ("[a, null]", "null", 14)]
)
def test_matrix_values_must_be_scalars(items: str, shown: str, column: int) -> None:
    error = read_error(f"matrix:\n  setup: {items}\n")
    assert f"each value of 'setup' must be a string, number or boolean, got {shown}" in (
        error.problem
    )
    assert where(error) == (2, column)


def test_duplicate_values_are_an_error() -> None:
    error = read_error("matrix:\n  setup:\n    n: [1, 2, '1']\n")
    assert "'1' appears twice in matrix dimension 'n'" in error.problem
    assert where(error) == (3, 15)


def test_errors_name_the_file_and_step() -> None:
    step = step_node("label: Build\nmatrix:\n  setup:\n    a-b: [x]\n")
    entry = step.get("matrix")
    assert entry is not None
    with pytest.raises(PipelineError) as info:
        read_matrix(Context("p.yml").for_step("Build"), entry)
    assert str(info.value).startswith("p.yml:4:5: matrix dimension name 'a-b'")
    assert str(info.value).endswith("in step 'Build'")


# --- tokens --------------------------------------------------------------------------------


def test_tokens_may_have_spaces_and_tabs_inside_the_braces() -> None:
    check(
        'command: "echo {{ matrix.os }} {{\tmatrix.arch\t}} {{matrix.os}}"\n'
        "matrix:\n  setup:\n    os: [linux]\n    arch: [amd64]\n"
    )
    check('command: "echo {{ matrix }}"\nmatrix: [a]\n')
    assert has_token("{{ \tmatrix  }}")
    assert has_token("x {{matrix.os}} y")
    assert not has_token("{{ matrix .os }} {{matrixos}} { {matrix} } {{pipeline}}")


def test_unknown_token_points_at_the_scalar() -> None:
    error = check_error(
        """\
        label: ok {{matrix.os}}
        env:
          NAME: fine
          OTHER: "{{ matrix.cpu }}"
        matrix:
          setup:
            os: [linux]
        """
    )
    assert "unknown matrix dimension 'cpu' in {{ matrix.cpu }}" in error.problem
    assert "one of 'os'" in error.problem
    assert where(error) == (4, 10)


def test_unnamed_token_in_a_named_matrix_is_an_error() -> None:
    error = check_error("command: echo {{matrix}}\nmatrix:\n  setup:\n    os: [linux]\n")
    assert "{{matrix}} does not fit this matrix" in error.problem
    assert "{{matrix.NAME}}" in error.problem
    assert where(error) == (1, 10)


def test_named_token_in_an_unnamed_matrix_is_an_error() -> None:
    error = check_error("command:\n  - echo one\n  - echo {{matrix.os}}\nmatrix: [linux]\n")
    assert "{{matrix.os}} does not fit this matrix" in error.problem
    assert "write {{matrix}}" in error.problem
    assert where(error) == (3, 5)


def test_tokens_are_checked_deep_in_plugins_but_not_in_keys_or_the_matrix() -> None:
    check(
        """\
        command: x
        "{{matrix.nope}}": kept
        plugins:
          - docker#v5:
              image: "img:{{matrix.os}}"
              "{{matrix.nope}}": [1, true, null]
        matrix:
          setup:
            os: ["{{matrix.nope}}", b]
        """
    )
    error = check_error(
        """\
        command: x
        plugins:
          - docker#v5:
              volumes: [a, "{{matrix.nope}}"]
        matrix:
          setup:
            os: [a]
        """
    )
    assert where(error) == (4, 20)


def test_empty_token_name_is_an_error() -> None:
    error = check_error("command: echo {{matrix.}}\nmatrix: [a]\n")
    assert "{{matrix.}}" in error.problem


# --- substitution --------------------------------------------------------------------------


def test_substitute_into_strings_but_not_keys() -> None:
    step = {
        "command": "make {{matrix.os}}-{{ matrix.arch }}",
        "label": ":{{matrix.os}}:",
        "env": {"OS_{{matrix.os}}": "{{matrix.os}}", "N": 3},
        "plugins": [{"docker#v5": {"image": "x:{{matrix.arch}}", "list": ["{{matrix.os}}"]}}],
        "timeout_in_minutes": 10,
        "soft_fail": None,
    }
    job = MatrixJob({"os": "linux", "arch": "arm64"}, {})
    assert substitute(step, job) == {
        "command": "make linux-arm64",
        "label": ":linux:",
        "env": {"OS_{{matrix.os}}": "linux", "N": 3},
        "plugins": [{"docker#v5": {"image": "x:arm64", "list": ["linux"]}}],
        "timeout_in_minutes": 10,
        "soft_fail": None,
    }
    assert step["command"] == "make {{matrix.os}}-{{ matrix.arch }}"  # a new value


def test_substitute_never_touches_the_matrix_itself() -> None:
    step = {"command": "echo {{matrix}}", "matrix": ["{{matrix}}", "b"]}
    assert substitute(step, MatrixJob({"": "b"}, {})) == {
        "command": "echo b",
        "matrix": ["{{matrix}}", "b"],
    }
    nested = {"plugins": [{"p": {"matrix": "{{matrix}}"}}]}
    assert substitute(nested, MatrixJob({"": "b"}, {})) == {"plugins": [{"p": {"matrix": "b"}}]}


def test_substituted_values_are_not_expanded_again() -> None:
    job = MatrixJob({"a": "{{matrix.b}}", "b": "x"}, {})
    assert substitute("{{matrix.a}} {{matrix.b}}", job) == "{{matrix.b}} x"


def test_substitute_leaves_tokens_that_do_not_fit_the_job() -> None:
    unnamed = MatrixJob({"": "one"}, {})
    named = MatrixJob({"os": "linux"}, {})
    text = "{{matrix}} {{matrix.os}} {{matrix.}} {{matrix.zz}}"
    assert substitute(text, unnamed) == "one {{matrix.os}} {{matrix.}} {{matrix.zz}}"
    assert substitute(text, named) == "{{matrix}} linux {{matrix.}} {{matrix.zz}}"
    assert substitute(("{{matrix}}", 1, 2.5, True), unnamed) == ("one", 1, 2.5, True)


def test_label_suffix() -> None:
    assert label_suffix(MatrixJob({"color": "green", "shape": "triangle"}, {})) == (
        "(green, triangle)"
    )
    assert label_suffix(MatrixJob({"": "one"}, {})) == "(one)"


def test_expanding_a_step_end_to_end() -> None:
    text = """\
        label: "{{matrix.color}} {{matrix.shape}}"
        command: echo {{matrix.shape}}
        matrix:
          setup:
            color: [green, blue]
            shape: [triangle]
          adjustments:
            - with: {color: purple, shape: octagon}
              soft_fail: true
        """
    check(text)
    step = step_node(text)
    entry = step.get("matrix")
    assert entry is not None
    plain = to_plain(step)
    expanded = [
        (substitute(plain, job)["label"], substitute(plain, job)["command"], job.extra)
        for job in read_matrix(Context("p.yml"), entry).jobs()
    ]
    assert expanded == [
        ("green triangle", "echo triangle", {}),
        ("blue triangle", "echo triangle", {}),
        ("purple octagon", "echo octagon", {"soft_fail": True}),
    ]


# --- the conformance fixture ---------------------------------------------------------------


def _steps_with_matrix(node: Node) -> list[MapNode]:
    found: list[MapNode] = []
    if isinstance(node, MapNode):
        if "matrix" in node:
            found.append(node)
        for entry in node.entries.values():
            found.extend(_steps_with_matrix(entry.value))
    elif isinstance(node, SeqNode):
        for item in node.items:
            found.extend(_steps_with_matrix(item))
    return found


def test_every_matrix_of_the_conformance_fixture_is_accepted() -> None:
    root = load_yaml(FIXTURE.read_text(), filename=FIXTURE.name)
    assert root is not None
    ctx = Context(FIXTURE.name)
    steps = _steps_with_matrix(root)
    assert len(steps) == 7
    counts = []
    for step in steps:
        entry = step.get("matrix")
        assert entry is not None
        matrix = read_matrix(ctx, entry)
        check_tokens(ctx, matrix, step)
        jobs = matrix.jobs()
        counts.append(len(jobs))
        for job in jobs:
            assert "{{" not in substitute(to_plain(step), job)["label"]
    assert counts == [2, 2, 3, 2, 4, 2, 2]
    assert ctx.warnings == []
