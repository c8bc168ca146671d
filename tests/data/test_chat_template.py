"""The tool chat template: `apply_chat_template(messages, tools=tools, add_generation_prompt=True)` — what vLLM and
SGLang call — gives the training prompt token for token, for every prompt style, on generator samples and on a
multi-turn conversation as the server converts it; and our own rendering of a dir does not change when the template
is written into it."""
from __future__ import annotations

import copy
import itertools
import json
import math

import pytest
from jinja2.exceptions import TemplateError

from toolace_r.config import BuiltinPoolConfig
from toolace_r.data.chat_template import base_template, tool_chat_template
from toolace_r.data.general_pool import general_samples
from toolace_r.data.pool import load_builtin
from toolace_r.data.prompts import SYSTEM_TEMPLATES, render_answer, render_prompt
from toolace_r.models import TINY_CHAT_TEMPLATE, load_tokenizer

STYLES = sorted(SYSTEM_TEMPLATES)
# A stand-in for an instruct model's template that renders `tools` and `tool_calls` itself (Qwen/Hermes-like): the
# wrapper must hide both from it, or the served prompt would differ from the trained one.
HERMES_LIKE = (
    "{%- if tools %}{{ '<|system|>Tools: <tools>' + (tools|tojson) + '</tools><|end|>' }}{%- endif %}"
    "{%- for m in messages %}{{ '<|' + m['role'] + '|>' }}"
    "{%- if m.tool_calls is defined and m.tool_calls %}{{ '<tool_call>' + (m.tool_calls|tojson) + '</tool_call>' }}"
    "{%- else %}{{ m['content'] }}{%- endif %}{{ '<|end|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>' }}{%- endif %}"
)
BASES = {"tiny": TINY_CHAT_TEMPLATE, "hermes_like": HERMES_LIKE}


@pytest.fixture(scope="module")
def samples():
    """Built-in pool (every category, nested/enum/list/negative values) and the general corpus (made-up tools)."""
    train, heldout = load_builtin(BuiltinPoolConfig(n_train=150, n_heldout=30, seed=0))
    return train + heldout + list(itertools.islice(general_samples(7), 60))


def tokenizers(tiny_model_dir, base: str, style: str):
    """(plain, wrapped): the same tokenizer with the base template, and with the tool template for `style`."""
    plain = load_tokenizer(str(tiny_model_dir))
    plain.chat_template = BASES[base]
    wrapped = load_tokenizer(str(tiny_model_dir))
    wrapped.chat_template = tool_chat_template(BASES[base], style)
    return plain, wrapped


def openai_tools(tools):
    return [{"type": "function", "function": tool} for tool in tools]


def ids(tokenizer, text: str) -> list[int]:
    """How training and the server tokenise a prompt (rows.encode_row, serve Engine.tokenize)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def template_ids(tokenizer, messages, tools) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("style", STYLES)
def test_template_gives_the_training_prompt_token_for_token(tiny_model_dir, samples, style, base):
    plain, wrapped = tokenizers(tiny_model_dir, base, style)
    categories = set()
    for s in samples:
        expected = render_prompt(plain, s.tools, s.messages, style)
        got = wrapped.apply_chat_template(s.messages, tools=openai_tools(s.tools), add_generation_prompt=True,
                                          tokenize=False)
        assert got == expected, s.id
        assert template_ids(wrapped, s.messages, openai_tools(s.tools)) == ids(plain, expected), s.id
        categories.add(s.category)
    assert categories == {"simple", "multiple", "parallel", "parallel_multiple", "irrelevance"}


def _request(style_tools):
    """An OpenAI chat request with a finished tool round: system + developer text, a call with nested, unicode,
    escaped, negative and float arguments, two tool results, and a follow-up."""
    args = {"city": "Zürich \"old town\"\n\tcentre\x01", "days": -3, "ratio": 0.1, "big": 12345678901234567890,
            "tiny": 1e-07, "flags": [True, False, None], "nested": {"a": [1, {"b": "c\\d"}], "": {}}, "empty": []}
    return {
        "model": "m",
        "tools": openai_tools(style_tools),
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Zürich and Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                  "arguments": json.dumps(args, ensure_ascii=False)}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
            {"role": "tool", "tool_call_id": "call_2", "content": "cloudy"},
            {"role": "assistant", "content": "21 degrees, cloudy."},
            {"role": "developer", "content": "Answer in calls only."},
            {"role": "user", "content": "And tomorrow in Oslo?"},
        ],
    }


WEATHER = {"name": "get_weather", "description": " Current weather. ",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]},
               "days": {"type": "integer"}, "where": {"type": "object", "properties": {"lat": {"type": "number"}},
                                                      "required": ["lat"]},
               "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["city"]}}
NO_DESCRIPTION = {"name": "ping"}  # OpenAI allows both to be left out; the server fills in "" and an empty object


def vllm_messages(messages):
    """What vLLM hands the template (chat_utils._postprocess_messages): tool-call arguments JSON-decoded."""
    out = copy.deepcopy(messages)
    for m in out:
        for call in m.get("tool_calls") or []:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"] or "{}")
    return out


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("style", STYLES)
def test_multi_turn_request_renders_as_the_server_renders_it(tiny_model_dir, style, base):
    from toolace_r.serve.convert import convert_messages, convert_tools
    from toolace_r.serve.schema import ChatCompletionRequest

    plain, wrapped = tokenizers(tiny_model_dir, base, style)
    body = _request([WEATHER, NO_DESCRIPTION])
    req = ChatCompletionRequest.model_validate(body)
    served = render_prompt(plain, convert_tools(req.tools), convert_messages(req.messages), style)
    assert "get_weather(city=" in served and "days=-3" in served and "Answer in calls only." in served
    got = wrapped.apply_chat_template(vllm_messages(body["messages"]), tools=body["tools"],
                                      add_generation_prompt=True, tokenize=False)
    assert got == served
    assert template_ids(wrapped, vllm_messages(body["messages"]), body["tools"]) == ids(plain, served)


@pytest.mark.parametrize("style", STYLES)
def test_a_request_without_tools_gets_the_servers_empty_tool_list(tiny_model_dir, style):
    plain, wrapped = tokenizers(tiny_model_dir, "tiny", style)
    messages = [{"role": "user", "content": "hello"}]
    expected = render_prompt(plain, [], messages, style)
    assert wrapped.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == expected


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("style", STYLES)
def test_our_own_rendering_is_unchanged_by_the_template(tiny_model_dir, samples, style, base):
    """prompts.render_prompt hands the template a built chat and no tools: round-1 and refinement prompts of a dir
    with the tool template equal those of the same dir with its base template."""
    plain, wrapped = tokenizers(tiny_model_dir, base, style)
    for s in samples[::3]:
        answer = render_answer(s.gold_calls())
        assert render_prompt(wrapped, s.tools, s.messages, style) == render_prompt(plain, s.tools, s.messages, style)
        assert (render_prompt(wrapped, s.tools, s.messages, style, previous_answer=answer)
                == render_prompt(plain, s.tools, s.messages, style, previous_answer=answer))


@pytest.mark.parametrize("value", [
    "plain", "quote \" back\\slash", "new\nline\r\ttab", "\x00\x1f\x7f", "ünïcode ✓", "", 0, -7, 10**30, True,
    False, None, 0.5, -2.5e-9, 1e22, math.inf, -math.inf, math.nan, [], {}, [1, [2, [3]]], {"k": {"j": [None, "x"]}},
])
def test_argument_values_are_written_as_calls_syntax_writes_them(tiny_model_dir, value):
    from toolace_r.calls import render_python

    plain, wrapped = tokenizers(tiny_model_dir, "tiny", "compact")
    calls = [{"name": "f", "arguments": {"x": value, "y": 1}}, {"name": "g", "arguments": {}}]
    dialogue = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "", "tool_calls": calls},
                {"role": "user", "content": "again"}]  # a Sample's form
    as_openai = copy.deepcopy(dialogue)
    as_openai[1] = {"role": "assistant", "content": None,
                    "tool_calls": [{"id": f"c{i}", "type": "function", "function": c} for i, c in enumerate(calls)]}
    got = wrapped.apply_chat_template(as_openai, tools=[], add_generation_prompt=True, tokenize=False)
    assert "<|assistant|>" + render_python(calls) + "<|end|>" in got
    assert got == render_prompt(plain, [], dialogue, "compact")


def test_arguments_as_a_json_string_are_refused_with_a_clear_error(tiny_model_dir):
    _, wrapped = tokenizers(tiny_model_dir, "tiny", "compact")
    messages = [{"role": "user", "content": "go"}, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]}]
    with pytest.raises(TemplateError, match="arguments must be an object"):
        wrapped.apply_chat_template(messages, tools=[], tokenize=False)


def test_wrapping_is_idempotent_and_keeps_the_base_template():
    once = tool_chat_template(TINY_CHAT_TEMPLATE, "compact")
    assert base_template(once) == TINY_CHAT_TEMPLATE and base_template(TINY_CHAT_TEMPLATE) == TINY_CHAT_TEMPLATE
    assert tool_chat_template(once, "signature") == tool_chat_template(TINY_CHAT_TEMPLATE, "signature")
    with pytest.raises(ValueError, match="unknown prompt style"):
        tool_chat_template(TINY_CHAT_TEMPLATE, "nope")


def test_the_base_templates_leading_whitespace_survives(tiny_model_dir):
    """The preamble's last tag must not strip what the base template starts with (trim_blocks, `-%}`)."""
    base = "\n  " + TINY_CHAT_TEMPLATE
    plain, wrapped = load_tokenizer(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    plain.chat_template, wrapped.chat_template = base, tool_chat_template(base, "compact")
    messages = [{"role": "user", "content": "hi"}]
    expected = render_prompt(plain, [], messages, "compact")
    assert expected.startswith("\n  ") and render_prompt(wrapped, [], messages, "compact") == expected
