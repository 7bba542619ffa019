"""The YAML loader: positions, merge sources, YAML 1.2 scalars, tags."""

from __future__ import annotations

import textwrap

import pytest

from conveyor.errors import PipelineError
from conveyor.pipeline.loader import (
    MapNode,
    Mark,
    ScalarNode,
    SeqNode,
    describe,
    load_yaml,
    to_plain,
)


def load(text: str) -> MapNode:
    node = load_yaml(textwrap.dedent(text), filename="f.yml")
    assert isinstance(node, MapNode)
    return node


def test_marks_are_one_based_for_keys_values_and_items() -> None:
    root = load(
        """\
        steps:
          - command: make
            env:
              A: 1
        """
    )
    steps = root.entries["steps"]
    assert steps.key_mark == Mark(1, 1)
    assert isinstance(steps.value, SeqNode)
    step = steps.value.items[0]
    assert isinstance(step, MapNode)
    assert step.mark == Mark(2, 5)
    assert step.entries["command"].value == ScalarNode("make", Mark(2, 14))
    env = step.entries["env"].value
    assert isinstance(env, MapNode)
    assert env.entries["A"].key_mark == Mark(4, 7)
    assert env.entries["A"].value == ScalarNode(1, Mark(4, 10))


def test_empty_value_points_at_its_key() -> None:
    root = load("a:\nb: 1\n")
    assert root.entries["a"].value == ScalarNode(None, Mark(1, 1))


def test_merged_keys_point_at_where_they_were_written() -> None:
    root = load(
        """\
        base: &base
          label: from base
        step:
          <<: *base
          command: x
        """
    )
    step = root.entries["step"].value
    assert isinstance(step, MapNode)
    assert list(step.entries) == ["command", "label"]
    assert step.entries["command"].key_mark == Mark(5, 3)
    assert step.entries["label"].key_mark == Mark(2, 3)
    assert step.entries["label"].value.mark == Mark(2, 10)


def test_plain_values_and_yaml_1_2() -> None:
    root = load(
        """\
        yes_: yes
        off_: off
        bool_: True
        octal: 0o52
        time: 12:00:00
        stamp: 2001-12-14t21:59:43.10-05:00
        date: 2002-12-14
        float: 1e3
        null_: ~
        tagged: !secret value
        binary: !!binary aGVsbG8=
        1: int key
        2.5: float key
        """
    )
    assert to_plain(root) == {
        "yes_": "yes",
        "off_": "off",
        "bool_": True,
        "octal": 42,
        "time": "12:00:00",
        "stamp": "2001-12-14t21:59:43.10-05:00",
        "date": "2002-12-14",
        "float": 1000.0,
        "null_": None,
        "tagged": "value",
        "binary": "hello",
        "1": "int key",
        "2.5": "float key",
    }
    assert type(to_plain(root)["octal"]) is int


def test_yaml_1_1_directive_is_honoured() -> None:
    node = load_yaml("%YAML 1.1\n---\na: yes\n", filename="f")
    assert node is not None
    assert to_plain(node) == {"a": True}


def test_anchor_names_may_be_reused() -> None:
    root = load("a: &x 1\nb: &x 2\nc: *x\n")
    assert to_plain(root) == {"a": 1, "b": 2, "c": 2}


def test_keys_equal_after_formatting_are_duplicates() -> None:
    with pytest.raises(PipelineError) as caught:
        load_yaml('1: a\n"1": b\n', filename="f")
    assert caught.value.line == 2
    assert "duplicate key '1' (first on line 1)" in caught.value.problem


def test_no_document() -> None:
    assert load_yaml("", filename="f") is None
    assert load_yaml("# only a comment\n", filename="f") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", "a mapping"),
        ("[]", "a list"),
        ("~", "null"),
        ("1.5", "a number"),
        ("true", "a boolean"),
        ("x", "a string"),
    ],
)
def test_describe(text: str, expected: str) -> None:
    node = load_yaml(text, filename="f")
    assert node is not None
    assert describe(node) == expected
