"""Parsing and rendering of tool calls: every accepted format, the error contract, BFCL's decoding quirks, and the
round trip parse(render(x)) == x as a property."""
from __future__ import annotations

import json
import keyword

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolace_r.calls import calls_equal, calls_from_objects, parse_calls, render_json, render_openai, render_python
from toolace_r.data.prompts import NO_CALL_ANSWER
from toolace_r.errors import CallParseError

F = [{"name": "f", "arguments": {"a": 1, "b": "x"}}]


@pytest.mark.parametrize("text", [
    '[f(a=1, b="x")]',
    'f(a=1, b="x")',
    "[f(a=1, b='x')]",
    '  [f( a = 1 , b = "x" )]\n',
    '```python\n[f(a=1, b="x")]\n```',
    '```\nf(a=1, b="x")\n```',
    '<think>maybe g?</think>[f(a=1, b="x")]',
    'Sure, calling it now: [f(a=1, b="x")] Let me know.',
    '{"name": "f", "arguments": {"a": 1, "b": "x"}}',
    '[{"name": "f", "arguments": {"a": 1, "b": "x"}}]',
    '{"name": "f", "arguments": "{\\"a\\": 1, \\"b\\": \\"x\\"}"}',
    '{"name": "f", "parameters": {"a": 1, "b": "x"}}',
    '<tool_call>\n{"name": "f", "arguments": {"a": 1, "b": "x"}}\n</tool_call>',
    '{"tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\\"a\\": 1, \\"b\\": \\"x\\"}"}}]}',
    '{"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": 1, "b": "x"}}}]}',
    "[{'name': 'f', 'arguments': {'a': 1, 'b': 'x'}}]",
])
def test_formats_parse_to_the_same_call(text):
    assert parse_calls(text) == F


def test_multiple_tool_call_blocks_and_parallel_python():
    text = '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>\n<tool_call>{"name": "g", "arguments": {}}</tool_call>'
    assert parse_calls(text) == [{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}]
    assert parse_calls('[f(a=1), g()]') == parse_calls(text)


@pytest.mark.parametrize("text,name", [
    ("[Market Trends API(symbol=\"AAPL\")]", "Market Trends API"),
    ("[spotify.play(artist=\"x\")]", "spotify.play"),
    ("[/madlibs-diceware(n=3)]", "/madlibs-diceware"),
    ("[3D Model Maker(size=3)]", "3D Model Maker"),
    ("[class.method(from=\"a\")]", "class.method"),
    ("Market Trends API(symbol=\"AAPL\")", "Market Trends API"),
])
def test_names_that_are_not_identifiers(text, name):
    (call,) = parse_calls(text)
    assert call["name"] == name


def test_argument_names_that_are_keywords_or_hyphenated():
    (call,) = parse_calls('[search(from="2024", max-results=5, in="x")]')
    assert call["arguments"] == {"from": "2024", "max-results": 5, "in": "x"}


def test_values():
    (call,) = parse_calls('[f(a=-1.5, b=[1, "two", None], c={"k": {"n": True}}, d=true, e=null, g=x, h=(1, 2), i=2 * 3)]')
    assert call["arguments"] == {"a": -1.5, "b": [1, "two", None], "c": {"k": {"n": True}}, "d": True, "e": None,
                                 "g": "x", "h": (1, 2), "i": 6}


@pytest.mark.parametrize("text", [NO_CALL_ANSWER, "", "   ", "I cannot help with that.", "The answer is [see above].",
                                  "[]", '{"tool_calls": null}', "Sorry, nothing fits (no matching function)."])
def test_prose_and_empty_answers_are_no_call(text):
    assert parse_calls(text) == []


@pytest.mark.parametrize("text,why", [
    ("[f(a=1", "never closed"),
    ("[f(1)]", "positional"),
    ("[f(**kw)]", "name=value"),
    ("[f(a=1, a=2)]", "twice"),
    ("[f(a=1), 3]", "not a call"),
    ('{"name": "f", "arguments": "{bad json"}', "not valid JSON"),
    ('{"name": "f", "arguments": [1, 2]}', "must be an object"),
    ('{"arguments": {}}', "not a tool call"),
    ("<tool_call>{oops}</tool_call>", "not valid JSON"),
    ("<tool_call></tool_call>", "empty"),
    ("[f(a=lambda: 1)]", "unsupported"),
    ("[f(a=9**9**9)]", "too large"),
    ("[f(a=1/0)]", "ZeroDivisionError"),
])
def test_malformed_call_attempts_raise_call_parse_error(text, why):
    with pytest.raises(CallParseError, match=why):
        parse_calls(text)


def test_unknown_decoder_is_a_programming_error():
    with pytest.raises(ValueError):
        parse_calls("[f()]", decoder="nope")


# --- BFCL's decoder -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ('[f(a=1)]', [{"name": "f", "arguments": {"a": 1}}]),
    ('f(a=1)', [{"name": "f", "arguments": {"a": 1}}]),  # missing outer brackets
    ('[[f(a=1)]', [{"name": "f", "arguments": {"a": 1}}]),  # extra leading [
    ('[f(a=1)', [{"name": "f", "arguments": {"a": 1}}]),  # missing final ]
    ("['f(a=1)']", [{"name": "f", "arguments": {"a": 1}}]),  # whole list quoted
    ('```\n[f(a=1)]\n```', [{"name": "f", "arguments": {"a": 1}}]),  # plain fence
    ('[f(a=+5)]', [{"name": "f", "arguments": {"a": -5}}]),  # any unary operator negates
    ('[f(a=not True)]', [{"name": "f", "arguments": {"a": -1}}]),
    ('[f(a=4 + 1)]', [{"name": "f", "arguments": {"a": 5}}]),  # arithmetic is computed
    ('[f(1, a=2)]', [{"name": "f", "arguments": {"a": 2}}]),  # positional args dropped silently
    ('[f(a=true)]', [{"name": "f", "arguments": {"a": "true"}}]),  # a bare name is its text
    ('[f(a=g(1))]', [{"name": "f", "arguments": {"a": "g(1)"}}]),
    ('[f(a=g(b=1))]', [{"name": "f", "arguments": {"a": {"g": {"b": 1}}}}]),
    ('[f(a=x[0])]', [{"name": "f", "arguments": {"a": "x[0]"}}]),
    ('[f(a=...)]', [{"name": "f", "arguments": {"a": "..."}}]),
    ('[a.b.c(x=1)]', [{"name": "a.b.c", "arguments": {"x": 1}}]),
    ('[f(a=1), g(b=2)]', [{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {"b": 2}}]),
])
def test_bfcl_decoder_accepts(text, expected):
    assert parse_calls(text, decoder="bfcl") == expected


@pytest.mark.parametrize("text", [
    '```python\n[f(a=1)]\n```',  # python fence
    '[f(a=1),\ng(b=2)]',  # newline between calls
    '[\n    f(a=1)\n]',  # indentation after [
    '[]',  # empty list
    NO_CALL_ANSWER,
    '[f(a=x.y)]',  # attribute value
    '[f(a={1, 2})]',  # set value
    '[f(a=-x)]',  # unary on a non-literal
    '[f(a=--1)]',
    '[f(a=f"{x}")]',
    '{"name": "f", "arguments": {}}',
    '[Market Trends API(x=1)]',
])
def test_bfcl_decoder_rejects(text):
    with pytest.raises(CallParseError):
        parse_calls(text, decoder="bfcl")


def test_lenient_and_bfcl_differ_where_bfcl_is_quirky():
    assert parse_calls("[f(a=+5)]") == [{"name": "f", "arguments": {"a": 5}}]
    assert parse_calls("```python\n[f(a=1)]\n```") == [{"name": "f", "arguments": {"a": 1}}]
    assert parse_calls("[f(a=1),\ng(b=2)]") == [{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {"b": 2}}]


# --- rendering and the round trip -------------------------------------------------------------------------------
def test_render_formats():
    calls = [{"name": "f", "arguments": {"a": 1, "b": "x\"y"}}, {"name": "g", "arguments": {}}]
    assert render_python(calls) == '[f(a=1, b="x\\"y"), g()]'
    assert json.loads(render_json(calls)) == calls
    openai = render_openai(calls)
    assert openai[0] == {"id": "call_0", "type": "function",
                         "function": {"name": "f", "arguments": '{"a": 1, "b": "x\\"y"}'}}
    assert calls_from_objects(openai) == calls


def test_calls_equal_is_order_insensitive_and_type_strict():
    a = [{"name": "f", "arguments": {"x": 1, "y": [1, 2]}}, {"name": "g", "arguments": {}}]
    b = [{"name": "g", "arguments": {}}, {"name": "f", "arguments": {"y": [1, 2], "x": 1}}]
    assert calls_equal(a, b)
    assert not calls_equal(a, b[:1])
    assert not calls_equal([{"name": "f", "arguments": {"x": 1}}], [{"name": "f", "arguments": {"x": 1.0}}])
    assert not calls_equal([{"name": "f", "arguments": {"x": 1}}], [{"name": "f", "arguments": {"x": True}}])
    assert not calls_equal(a + a[:1], a + a[1:])


_word = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
tool_names = st.one_of(
    _word,
    st.builds(lambda a, b: f"{a}.{b}", _word, _word),
    st.from_regex(r"[A-Za-z/][A-Za-z0-9_/\-]{0,10}( [A-Za-z0-9][A-Za-z0-9_\-]{0,6}){0,3}", fullmatch=True),
    st.sampled_from(["Market Trends API", "/madlibs-diceware", "class.method", "None", "3D Model Maker"]),
)
arg_names = st.one_of(_word, st.sampled_from(sorted(keyword.kwlist)), st.from_regex(r"[a-z]{1,5}(-[a-z]{1,5}){1,2}",
                                                                                    fullmatch=True))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
call_lists = st.lists(
    st.builds(lambda n, a: {"name": n, "arguments": a}, tool_names, st.dictionaries(arg_names, json_values, max_size=4)),
    min_size=1, max_size=4,
)


def _strict(x):
    """Order- and type-exact form (1, 1.0 and True differ; -0.0 and 0.0 differ)."""
    return repr(x)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call_lists)
def test_round_trip_python_json_openai(calls):
    assert _strict(parse_calls(render_python(calls))) == _strict(calls)
    assert _strict(parse_calls(render_json(calls))) == _strict(calls)
    assert _strict(parse_calls(json.dumps(render_openai(calls)))) == _strict(calls)
    assert _strict(calls_from_objects(render_openai(calls))) == _strict(calls)
    assert calls_equal(parse_calls(render_python(calls)), calls)
