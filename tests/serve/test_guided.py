"""Enforced tool_choice and the `guided` option, below the HTTP layer (issue 20, item 2): which requests get a
decoding constraint (convert.call_constraint), the 400s checked before the model runs, and the engine's answers on
the memorising tiny model — which answers the joke without a call, and must call when tool_choice says so. The same
through the real app with the openai SDK: tests/serve/test_app.py and test_stream.py."""
from __future__ import annotations

import pytest

from serve_model import OPENAI_TOOLS
from toolace_r.config import ServeConfig
from toolace_r.data.prompts import NO_CALL_ANSWER
from toolace_r.serve.convert import build_job, completion_response
from toolace_r.serve.model import ServingModel
from toolace_r.serve.schema import ApiError, ChatCompletionRequest

from .common import JOKE, PARIS

NAMED = {"type": "function", "function": {"name": "get_time"}}


@pytest.fixture(scope="module")
def engine(model_dir) -> ServingModel:
    return ServingModel.load(str(model_dir), dtype="float32")


def _job(engine, **fields):
    body = {"model": "toolace-r", "messages": PARIS, "tools": OPENAI_TOOLS, **fields}
    req = ChatCompletionRequest.model_validate(body, strict=True)
    return (*build_job(req, ServeConfig(), engine), req)


def test_which_requests_are_constrained(engine):
    assert _job(engine)[0].constraint is None  # auto: plain decoding, as before
    assert _job(engine, guided=False)[0].constraint is None
    assert _job(engine, tool_choice="none", guided=True)[0].constraint is None
    assert _job(engine, tools=None, guided=True)[0].constraint is None
    guided = _job(engine, guided=True)[0].constraint
    assert guided.allow_text and [f.name for f in guided.functions] == ["get_weather", "get_time"]
    required = _job(engine, tool_choice="required")[0].constraint
    assert not required.allow_text and required.max_calls is None
    named = _job(engine, tool_choice=NAMED, parallel_tool_calls=False)[0].constraint
    assert [f.name for f in named.functions] == ["get_time"] and named.max_calls == 1 and not named.allow_text


def test_a_max_tokens_too_small_for_any_call_is_a_400_before_the_model_runs(engine):
    with pytest.raises(ApiError) as err:
        _job(engine, tool_choice="required", max_tokens=3)
    assert err.value.status == 400 and err.value.param == "max_tokens" and "shortest call" in err.value.message
    assert _job(engine, guided=True, max_tokens=3)[0].constraint is not None  # guided may answer without a call


def test_the_openapi_schema_documents_guided():
    prop = ChatCompletionRequest.model_json_schema()["properties"]["guided"]
    assert "extra_body" in prop["description"] and "auto" in prop["description"]


@pytest.mark.slow
def test_the_engine_calls_when_tool_choice_demands_it(engine):
    """JOKE: the model answers without a call (the 422 of old); required and named now decode a valid call, in
    every refinement round. PARIS guided: the same call as unguided. JOKE guided: still no call."""
    from toolace_r.calls import parse_calls

    cases = [("auto", dict(messages=JOKE)), ("required", dict(messages=JOKE, tool_choice="required")),
             ("named", dict(messages=JOKE, tool_choice=NAMED)), ("one", dict(messages=JOKE, tool_choice="required",
                                                                           parallel_tool_calls=False)),
             ("guided_paris", dict(guided=True)), ("paris", {}), ("guided_joke", dict(messages=JOKE, guided=True))]
    built = {name: _job(engine, **fields) for name, fields in cases}
    outcomes = dict(zip(built, engine.run([b[0] for b in built.values()])))
    assert outcomes["auto"].answer == NO_CALL_ANSWER and outcomes["guided_joke"].answer == NO_CALL_ANSWER
    assert outcomes["guided_paris"].calls == outcomes["paris"].calls == [
        {"name": "get_weather", "arguments": {"city": "Paris"}}]
    for name in ("required", "named", "one"):
        job, mode, fn, req = built[name]
        out = outcomes[name]
        response = completion_response(out, job, mode, fn, "toolace-r", req.parallel_tool_calls)
        choice = response["choices"][0]
        assert choice["finish_reason"] == "tool_calls", (name, out.answer)
        calls = parse_calls(out.answer)
        assert calls and all(c["name"] in ({"get_time"} if name == "named" else {"get_weather", "get_time"})
                             for c in calls)
        assert all(isinstance(c["arguments"].get("city"), str) for c in calls), out.answer  # required param
        assert name != "one" or len(calls) == 1
