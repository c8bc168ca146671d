"""OpenAI ↔ project conversion (toolace_r.serve.convert): tools, message history, tool_choice, and the response built
from the engine's outcome. Fast: no Ray, no model."""
from __future__ import annotations

import json

import pytest

from toolace_r.data.prompts import NO_CALL_ANSWER
from toolace_r.serve.convert import completion_response, convert_messages, convert_tools, tool_choice_mode
from toolace_r.serve.model import Job, Outcome
from toolace_r.serve.schema import ApiError

from serve_model import OPENAI_TOOLS, WEATHER_TOOL

from .common import PARIS, request


def test_openai_tools_become_function_schemas():
    tools = convert_tools(request(tools=OPENAI_TOOLS).tools)
    assert tools[0] == {"name": "get_weather", "description": "Current weather for a city.",
                        "parameters": WEATHER_TOOL["function"]["parameters"]}
    assert [t["name"] for t in tools] == ["get_weather", "get_time"]
    with pytest.raises(ApiError) as err:
        convert_tools(request(tools=[WEATHER_TOOL, WEATHER_TOOL]).tools)
    assert err.value.status == 400 and err.value.param == "tools[1].function.name"


def test_history_with_tool_calls_and_tool_turns_becomes_sample_messages():
    req = request(messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18}'},
        {"role": "user", "content": "And in Lima?"},
    ])
    messages = convert_messages(req.messages)
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1] == {"role": "user", "content": "Weather in Paris?"}
    assert messages[2]["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert messages[3] == {"role": "tool", "content": '{"temp_c": 18}'}


@pytest.mark.parametrize("arguments, fragment", [("{city: Paris", "not valid JSON"), ("[1, 2]", "must be a JSON object")])
def test_broken_tool_call_arguments_in_history_are_the_clients_error(arguments, fragment):
    req = request(messages=PARIS + [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]}])
    with pytest.raises(ApiError) as err:
        convert_messages(req.messages)
    assert err.value.status == 400 and fragment in err.value.message
    assert err.value.param == "messages[1].tool_calls[0].function.arguments"


def test_tool_choice_modes():
    tools = convert_tools(request(tools=OPENAI_TOOLS).tools)
    assert tool_choice_mode(request(), tools) == ("auto", None)
    assert tool_choice_mode(request(tool_choice="none"), tools) == ("none", None)
    named = request(tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert tool_choice_mode(named, tools) == ("named", "get_time")
    unknown = request(tool_choice={"type": "function", "function": {"name": "launch_rocket"}})
    with pytest.raises(ApiError) as err:
        tool_choice_mode(unknown, tools)
    assert err.value.status == 400 and err.value.param == "tool_choice" and "launch_rocket" in err.value.message
    with pytest.raises(ApiError):
        tool_choice_mode(request(tool_choice="required"), [])


def test_responses_follow_tool_choice_and_report_rounds():
    job = Job([], PARIS, 3, 64, 0.0, prompt_tokens=40)
    two = [{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_time", "arguments": {"city": "Rome"}}]
    out = Outcome('[get_weather(city="Oslo"), get_time(city="Rome")]', two, rounds=2, completion_tokens=30)
    resp = completion_response(out, job, "auto", None, "toolace-r", None)
    calls = resp["choices"][0]["message"]["tool_calls"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Oslo"}, {"city": "Rome"}]
    assert resp["choices"][0]["finish_reason"] == "tool_calls" and resp["toolace_r"]["refinement_rounds"] == 2
    assert resp["usage"] == {"prompt_tokens": 40, "completion_tokens": 30, "total_tokens": 70}
    assert len(completion_response(out, job, "auto", None, "toolace-r", False)["choices"][0]["message"]["tool_calls"]) == 1
    named = completion_response(out, job, "named", "get_time", "toolace-r", None)["choices"][0]["message"]
    assert [c["function"]["name"] for c in named["tool_calls"]] == ["get_time"]
    none = completion_response(out, job, "none", None, "toolace-r", None)["choices"][0]
    assert none["message"] == {"role": "assistant", "content": out.answer} and none["finish_reason"] == "stop"
    prose = Outcome(NO_CALL_ANSWER, [], rounds=2, completion_tokens=20)
    with pytest.raises(ApiError) as err:
        completion_response(prose, job, "required", None, "toolace-r", None)
    assert err.value.status == 422 and err.value.code == "tool_choice_unsatisfied"
    broken = Outcome("[get_weather(city=", None, rounds=3, completion_tokens=64, parse_error="unclosed call")
    resp = completion_response(broken, job, "auto", None, "toolace-r", None)
    assert resp["choices"][0]["message"]["content"] == "[get_weather(city=" and resp["choices"][0]["finish_reason"] == "length"
    assert resp["toolace_r"]["parse_error"] == "unclosed call"


