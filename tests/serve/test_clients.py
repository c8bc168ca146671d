"""The clients agents are built on, against the real app on Ray Serve (issue 20, item 5): the official `openai` SDK
(sync and async, plain and streaming, with tools), `langchain-openai` (`bind_tools(...).invoke` and `.stream`, the
streamed `AIMessageChunk`s added up into the same tool call) and `litellm.completion` (the server as an
OpenAI-compatible `api_base`). Each test asserts on what the client itself parsed.

The served model is tests/serve_model.py's memorising tiny Llama: it calls get_weather(city="Paris") for PARIS and
answers the joke without a call, through the real load + refine path. All slow: they share one live server.
"""
from __future__ import annotations

import asyncio
import json
import os

import pytest

from serve_model import OPENAI_TOOLS
from toolace_r.data.prompts import NO_CALL_ANSWER

from .common import JOKE, PARIS, client

pytestmark = pytest.mark.slow
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm fetches a price list on import otherwise
PARIS_CALL = ("get_weather", {"city": "Paris"})


def _openai_stream(stream) -> tuple[str, list[tuple[str, dict]], str, list]:
    """(content, [(name, arguments)], finish_reason, chunks) accumulated from an openai SDK stream."""
    chunks = list(stream)
    content, calls, finish = "", {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                slot = calls.setdefault(tc.index, ["", ""])
                slot[0] += tc.function.name or ""
                slot[1] += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, [(n, json.loads(a)) for n, a in (calls[i] for i in sorted(calls))], finish, chunks


# ------------------------------------------------------------------------------------------------ openai SDK
def test_openai_sync_plain_and_streamed_tool_call(server):
    c = client(server)
    plain = c.chat.completions.create(model="toolace-r", messages=PARIS, tools=OPENAI_TOOLS)
    (call,) = plain.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == PARIS_CALL
    content, calls, finish, chunks = _openai_stream(c.chat.completions.create(
        model="toolace-r", messages=PARIS, tools=OPENAI_TOOLS, stream=True, stream_options={"include_usage": True}))
    assert calls == [PARIS_CALL] and finish == "tool_calls" and content == ""
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == {**plain.usage.model_dump()}
    # the SDK's own accumulator (client.chat.completions.stream) agrees
    with c.chat.completions.stream(model="toolace-r", messages=PARIS, tools=OPENAI_TOOLS) as s:
        final = s.get_final_completion()
    (acc,) = final.choices[0].message.tool_calls
    assert (acc.function.name, json.loads(acc.function.arguments)) == PARIS_CALL


def test_openai_sync_streamed_text_equals_the_non_streamed_text(server):
    c = client(server)
    for extra in ({}, {"max_refine_rounds": 1}):  # the refined final answer; tokens as decoded
        plain = c.chat.completions.create(model="toolace-r", messages=JOKE, tools=OPENAI_TOOLS, extra_body=extra)
        content, calls, finish, chunks = _openai_stream(c.chat.completions.create(
            model="toolace-r", messages=JOKE, tools=OPENAI_TOOLS, stream=True, extra_body=extra))
        assert content == plain.choices[0].message.content == NO_CALL_ANSWER, extra
        assert calls == [] and finish == plain.choices[0].finish_reason == "stop"
        assert chunks[0].choices[0].delta.role == "assistant"


def test_openai_async_plain_and_streamed(server):
    from openai import AsyncOpenAI

    async def main():
        c = AsyncOpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)
        plain = await c.chat.completions.create(model="toolace-r", messages=PARIS, tools=OPENAI_TOOLS)
        stream = await c.chat.completions.create(model="toolace-r", messages=PARIS, tools=OPENAI_TOOLS, stream=True)
        chunks = [chunk async for chunk in stream]
        text_stream = await c.chat.completions.create(model="toolace-r", messages=JOKE, tools=OPENAI_TOOLS,
                                                      stream=True, extra_body={"max_refine_rounds": 1})
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in text_stream if chunk.choices])
        await c.close()
        return plain, chunks, text

    plain, chunks, text = asyncio.run(main())
    (call,) = plain.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == PARIS_CALL
    _, calls, finish, _ = _openai_stream(chunks)
    assert calls == [PARIS_CALL] and finish == "tool_calls"
    assert text == NO_CALL_ANSWER


# ------------------------------------------------------------------------------------------------ LangChain
def _chat(server: str):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model="toolace-r", base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120,
                      temperature=0)


def test_langchain_bind_tools_invoke_and_stream_give_the_same_call(server):
    from langchain_core.messages import AIMessageChunk

    llm = _chat(server).bind_tools(OPENAI_TOOLS)
    message = llm.invoke(PARIS[0]["content"])
    (call,) = message.tool_calls
    assert (call["name"], call["args"]) == PARIS_CALL
    chunks = list(llm.stream(PARIS[0]["content"]))
    assert len(chunks) > 3 and all(isinstance(ch, AIMessageChunk) for ch in chunks)
    total = chunks[0]
    for ch in chunks[1:]:
        total = total + ch
    (streamed,) = total.tool_calls
    assert (streamed["name"], streamed["args"]) == (call["name"], call["args"])
    assert streamed["id"].startswith("call_") and total.response_metadata.get("finish_reason") == "tool_calls"


def test_langchain_streamed_text_equals_the_invoked_text(server):
    llm = _chat(server).bind_tools(OPENAI_TOOLS)
    message = llm.invoke(JOKE[0]["content"])
    assert message.tool_calls == [] and message.content == NO_CALL_ANSWER
    assert "".join(ch.content for ch in llm.stream(JOKE[0]["content"])) == message.content


# ------------------------------------------------------------------------------------------------ litellm
def test_litellm_completion_plain_and_streamed(server):
    import litellm

    kw = dict(model="openai/toolace-r", api_base=f"{server}/v1", api_key="unused", tools=OPENAI_TOOLS,
              num_retries=0, timeout=120)
    resp = litellm.completion(messages=PARIS, **kw)
    (call,) = resp.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == PARIS_CALL
    chunks = list(litellm.completion(messages=PARIS, stream=True, **kw))
    built = litellm.stream_chunk_builder(chunks, messages=PARIS)
    (streamed,) = built.choices[0].message.tool_calls
    assert (streamed.function.name, json.loads(streamed.function.arguments)) == PARIS_CALL
    text = litellm.completion(messages=JOKE, **kw).choices[0].message.content
    streamed_text = "".join(ch.choices[0].delta.content or "" for ch in
                            litellm.completion(messages=JOKE, stream=True, **kw) if ch.choices)
    assert streamed_text == text == NO_CALL_ANSWER
