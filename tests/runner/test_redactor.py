"""The streaming redactor: secrets never leave it, whole or in part, however the output is cut
into writes, and in their escaped forms too."""

from __future__ import annotations

import base64
import contextlib
import json
from urllib.parse import quote, quote_plus

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.runner.redactor import DEFAULT_REDACTED_VARS, REDACTED, Redactor, secret_values

SECRET = b"hunter2-s3cr3t"
# Output around secrets: printable text without the bytes secrets are made of here, so a
# secret can only appear where the test puts it.
filler = st.binary(max_size=200).map(
    lambda b: bytes(c for c in b if c not in b"hunter2-s3cr3tHUNTER")
)
secrets_st = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_characters="\\"),
    min_size=6,
    max_size=40,
)


def run(redactor: Redactor, data: bytes, cuts: list[int]) -> bytes:
    """Feed `data` cut at `cuts`; what came out, flush included."""
    out = []
    last = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))):
        out.append(redactor.write(data[last:cut]))
        last = cut
    out.append(redactor.write(data[last:]))
    out.append(redactor.flush())
    return b"".join(out)


def at_once(secrets: list[bytes], data: bytes) -> bytes:
    r = Redactor(secrets)
    return r.write(data) + r.flush()


@given(before=filler, after=filler, cuts=st.lists(st.integers(0, 500), max_size=30))
@settings(max_examples=300)
def test_a_secret_split_anywhere_never_comes_out(
    before: bytes, after: bytes, cuts: list[int]
) -> None:
    data = before + SECRET + after
    out = run(Redactor([SECRET]), data, cuts)
    assert out == before + REDACTED + after


def test_every_single_split_position_of_two_secrets() -> None:
    data = b"a " + SECRET + b" and " + SECRET + b"\r\n"
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            assert run(Redactor([SECRET]), data, [i, j]) == b"a [REDACTED] and [REDACTED]\r\n"


@given(
    secret=secrets_st, before=filler, after=filler, cuts=st.lists(st.integers(0, 600), max_size=20)
)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_escaped_forms_are_redacted(
    secret: str, before: bytes, after: bytes, cuts: list[int]
) -> None:
    raw = secret.encode()
    for form in {
        raw,
        json.dumps(secret)[1:-1].encode(),
        quote(raw, safe="").encode(),
        quote_plus(raw, safe="").encode(),
    }:
        out = run(Redactor([raw]), before + form + after, cuts)
        assert form not in out
        assert REDACTED in out
        # Cut anywhere, the result is the same as all at once.
        assert out == at_once([raw], before + form + after)


@given(
    secret=st.binary(min_size=6, max_size=40).filter(lambda b: len(b.strip()) >= 6),
    prefix=st.binary(max_size=8),
    suffix=st.binary(max_size=8),
)
@settings(max_examples=300)
def test_base64_of_a_secret_inside_a_larger_blob(
    secret: bytes, prefix: bytes, suffix: bytes
) -> None:
    """Wherever the secret sits in the encoded bytes, the characters that carry it go."""
    blob = base64.b64encode(prefix + secret + suffix)
    out = at_once([secret], b"token: " + blob + b"\n")
    assert REDACTED in out
    # What is left of the blob can no longer be decoded back to the secret.
    for piece in out.split(REDACTED):
        for start in range(0, len(piece)):
            chunk = piece[start:]
            chunk = chunk[: len(chunk) // 4 * 4]
            with contextlib.suppress(ValueError):  # not base64 there: nothing to decode
                assert secret not in base64.b64decode(chunk, validate=True)


def test_a_multi_line_secret_survives_line_ending_and_indentation_changes() -> None:
    key = b"-----BEGIN KEY-----\nMIIEabc123\nQWERTY456\n-----END KEY-----\n"
    shown = (
        b"  -----BEGIN KEY-----\r\n  MIIEabc123\r\n\r\n"
        b"  QWERTY456\r\n  -----END KEY-----\r\nafter\r\n"
    )
    for cut in range(len(shown) + 1):
        out = run(Redactor([key]), shown, [cut])
        assert out == b"  [REDACTED]\r\nafter\r\n", cut
    # A line of it alone is not the secret.
    assert at_once([key], b"MIIEabc123\r\n") == b"MIIEabc123\r\n"


def test_overlapping_secrets_are_both_hidden() -> None:
    assert at_once([b"abcdefgh", b"efghijkl"], b"<abcdefghijkl>") == b"<[REDACTED]>"
    # Of two secrets starting at one place, the longer is hidden whole.
    assert at_once([b"secret-one", b"secret-one-two"], b"[secret-one-two]") == b"[[REDACTED]]"


def test_output_without_a_secret_in_sight_is_not_held_back() -> None:
    r = Redactor([SECRET])
    assert r.write(b"building...\r\n") == b"building...\r\n"
    # A possible start of the secret is held until it is settled...
    assert r.write(b"user hunt") == b"user "
    assert r.write(b"ing season\r\n") == b"hunting season\r\n"
    # ...and at the end a partial match is just text.
    assert r.write(b"hunter2-s3c") == b""
    assert r.flush() == b"hunter2-s3c"


def test_short_values_are_not_redacted_and_say_so() -> None:
    r = Redactor()
    assert r.add("abc", name="$DB_PASSWORD") is False
    assert r.warnings == ["$DB_PASSWORD is shorter than 6 bytes: it is not redacted from the log"]
    assert r.write(b"abc") + r.flush() == b"abc"
    # An empty value is simply not a secret.
    assert r.add("") is False and len(r.warnings) == 1


def test_secrets_added_later_are_redacted_from_then_on() -> None:
    r = Redactor()
    assert r.write(b"early token-123456\n") == b"early token-123456\n"
    r.add("token-123456")
    assert r.write(b"late token-123456\n") + r.flush() == b"late [REDACTED]\n"


def test_secret_values_come_from_the_variables_named_by_the_patterns() -> None:
    env = {
        "DB_PASSWORD": "pw-123456",
        "CONVEYOR_AGENT_ACCESS_TOKEN": "cvj_abcdef",
        "GITHUB_API_KEY": "ghp_123456",
        "PATH": "/usr/bin",
        "db_password": "lowercase names are not matched",
    }
    found = secret_values(env, DEFAULT_REDACTED_VARS)
    assert found == {
        "DB_PASSWORD": "pw-123456",
        "CONVEYOR_AGENT_ACCESS_TOKEN": "cvj_abcdef",
        "GITHUB_API_KEY": "ghp_123456",
    }


def test_a_value_with_surrounding_whitespace_is_redacted_as_printed() -> None:
    """A YAML block scalar gives the value a trailing newline; the value is printed without it,
    or followed by the terminal's CRLF."""
    r = Redactor(["hunter2secret\n", "  spacedsecret"])
    out = r.write(b"echo: hunter2secret\r\ntoken=hunter2secret. value:spacedsecret\n") + r.flush()
    assert out == b"echo: [REDACTED]\r\ntoken=[REDACTED]. value:[REDACTED]\n"
