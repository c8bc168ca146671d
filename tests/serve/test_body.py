"""Reading the request body (toolace_r.serve.body): pathological JSON is a 400 naming the problem, never an exception
that would become a 500. Fast: no Ray, no HTTP (tests/serve/test_fuzz.py sends the same bodies to the live server)."""
from __future__ import annotations

import json
import sys
import time

import pytest

from toolace_r.serve.body import MAX_INT_DIGITS, MAX_JSON_DEPTH, check_depth, parse_json, parse_json_body
from toolace_r.serve.convert import convert_messages
from toolace_r.serve.schema import ApiError

from .common import PARIS, request

# (name, raw body, fragment the 400's message must hold). Shared with test_fuzz.py, which posts them to the server.
PATHOLOGICAL_BODIES = [
    ("5000 nested arrays", b"[" * 5000 + b"]" * 5000, "levels deep"),
    ("5000 nested objects", b'{"a":' * 5000 + b"1" + b"}" * 5000, "levels deep"),
    ("deep nesting inside a field", json.dumps({"model": "toolace-r", "messages": PARIS}).encode()[:-1]
     + b', "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}", "levels deep"),
    ("unclosed nesting", b"[" * 100_000, "levels deep"),
    ("integer with 100 000 digits", b'{"model": "toolace-r", "seed": ' + b"9" * 100_000 + b"}", "100000 digits"),
    ("negative integer with 5000 digits", b'{"model": "toolace-r", "seed": -' + b"1" * 5000 + b"}", "5000 digits"),
    ("float beyond range", b'{"model": "toolace-r", "temperature": 1e999999}', "out of range"),
    ("negative float beyond range", b'{"model": "toolace-r", "temperature": -1e400}', "out of range"),
    ("NaN", b'{"model": "toolace-r", "temperature": NaN}', "NaN"),
    ("Infinity", b'{"model": "toolace-r", "top_p": -Infinity}', "-Infinity"),
    ("invalid UTF-8 byte", b'{"model": "toolace-r", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
     "not valid UTF-8"),
    ("truncated UTF-8 sequence", b'{"model": "toolace-r\xe2\x82"}', "not valid UTF-8"),
    ("UTF-8 encoded surrogate", b'{"model": "\xed\xa0\x80"}', "not valid UTF-8"),
    ("UTF-16 body", json.dumps({"model": "toolace-r"}).encode("utf-16"), "not valid UTF-8"),
    ("duplicate top-level key", b'{"model": "toolace-r", "messages": [], "model": "gpt-4o"}', "'model' twice"),
    ("duplicate key deep inside", json.dumps({"model": "toolace-r", "messages": PARIS}).encode()[:-1]
     + b', "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", '
       b'"type": "array"}}}]}', "'type' twice"),
]


@pytest.mark.parametrize("name, raw, fragment", PATHOLOGICAL_BODIES, ids=[p[0] for p in PATHOLOGICAL_BODIES])
def test_pathological_bodies_are_a_400_naming_the_problem(name, raw, fragment):
    with pytest.raises(ApiError) as err:
        parse_json_body(raw)
    assert err.value.status == 400 and err.value.code == "invalid_json", name
    assert fragment in err.value.message and err.value.message.startswith("request body"), err.value.message
    assert len(err.value.message) < 300  # the offending text is not echoed back whole


def test_well_formed_bodies_parse_as_json_does():
    body = {"model": "toolace-r", "messages": [{"role": "user", "content": "brackets [{ in \"strings\" }] \\"}],
            "temperature": 0.5, "seed": -12, "n": 1, "x": [1e308, -0.0, 12345678901234567890]}
    raw = json.dumps(body).encode()
    assert parse_json_body(raw) == json.loads(raw)
    assert parse_json_body(b"\xef\xbb\xbf" + raw) == body  # a UTF-8 byte order mark is ignored
    assert parse_json_body(json.dumps({"content": "é ✓ 🙂"}, ensure_ascii=False).encode()) == {"content": "é ✓ 🙂"}
    assert parse_json_body(b'{"n": ' + b"9" * MAX_INT_DIGITS + b"}")["n"] == int("9" * MAX_INT_DIGITS)


def test_a_lower_interpreter_int_limit_is_a_400_not_a_500(monkeypatch):
    """PYTHONINTMAXSTRDIGITS / -X int_max_str_digits below our limit: int() would raise ValueError inside json.loads."""
    monkeypatch.setattr(sys, "get_int_max_str_digits", lambda: 1000)
    with pytest.raises(ApiError, match="1200 digits; the limit is 1000") as err:
        parse_json_body(b'{"n": ' + b"9" * 1200 + b"}")
    assert err.value.status == 400


def test_depth_limit_counts_brackets_outside_strings_only():
    at_limit = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert parse_json(at_limit) is not None
    with pytest.raises(ApiError, match=f"more than {MAX_JSON_DEPTH} levels"):
        parse_json("[" + at_limit + "]")
    in_strings = json.dumps({"a": "[" * 10_000, "b": '\\"[{' * 1000, "c": ["{" * 500]})
    assert parse_json(in_strings) == json.loads(in_strings)


def test_depth_scan_is_linear_on_adversarial_quotes():
    """A text of escaped quotes with no closing one: a naive "match a string from each quote" scan is quadratic."""
    text = '"' + '\\"' * 300_000
    start = time.perf_counter()
    check_depth(text)
    assert time.perf_counter() - start < 2.0
    with pytest.raises(ApiError, match="not valid JSON"):
        parse_json(text)


def test_empty_and_lone_surrogate_bodies_are_still_400s():
    for raw in (b"", b"  \n", b"\xef\xbb\xbf"):
        with pytest.raises(ApiError, match="empty"):
            parse_json_body(raw)
    with pytest.raises(ApiError, match="surrogate"):
        parse_json_body(b'{"content": "\\ud800"}')


@pytest.mark.parametrize("arguments, fragment", [
    ("[" * 5000 + "]" * 5000, "levels deep"),
    ('{"n": ' + "7" * 10_000 + "}", "10000 digits"),
    ('{"x": 1e999}', "out of range"),
    ('{"city": "Paris", "city": "Rome"}', "'city' twice"),
    ('{"city": "\\udc00"}', "surrogate"),
])
def test_tool_call_arguments_in_the_history_get_the_same_limits(arguments, fragment):
    req = request(messages=PARIS + [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]}])
    with pytest.raises(ApiError) as err:
        convert_messages(req.messages)
    param = "messages[1].tool_calls[0].function.arguments"
    assert err.value.status == 400 and err.value.param == param
    assert err.value.message.startswith(param) and fragment in err.value.message, err.value.message
