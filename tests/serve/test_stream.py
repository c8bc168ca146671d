"""Streaming (toolace_r.serve.stream; issue 20, item 1). Fast: the live-text detokeniser and the chunk sequence,
parsed with the openai SDK's own chunk types, and the decoder's streaming hooks (output-neutral, stop a row). Slow:
the real app on Ray Serve over raw HTTP: event-stream framing, the chunk order, usage, live token streaming with
`max_refine_rounds: 1`, JSON errors before the stream starts, and a client that disconnects mid-stream.

Client libraries parsing these streams are in test_clients.py.
"""
from __future__ import annotations

import json

import pytest
import requests

from serve_model import OPENAI_TOOLS, _project_tools
from toolace_r.data.prompts import NO_CALL_ANSWER
from toolace_r.serve.model import Job, Outcome, ServingModel
from toolace_r.serve.stream import ChunkWriter, TextStream, final_chunks

from .common import JOKE, PARIS


@pytest.fixture(scope="module")
def engine(model_dir) -> ServingModel:
    return ServingModel.load(str(model_dir), dtype="float32")


def _events(lines: list[str]) -> list:
    """SSE text → the decoded `data:` payloads ("[DONE]" kept as the string)."""
    out = []
    for event in "".join(lines).split("\n\n"):
        if event:
            assert event.startswith("data: "), event
            data = event[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _assemble(chunks: list) -> tuple[str, list[tuple[str, str, str]], str]:
    """What a client accumulates from ChatCompletionChunk objects: (content, [(id, name, arguments)], finish)."""
    content, calls, finish = "", {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            for tc in delta.tool_calls or []:
                slot = calls.setdefault(tc.index, ["", "", ""])
                slot[0] += tc.id or ""
                slot[1] += (tc.function.name or "") if tc.function else ""
                slot[2] += (tc.function.arguments or "") if tc.function else ""
            finish = choice.finish_reason or finish
    return content, [tuple(calls[i]) for i in sorted(calls)], finish


# ------------------------------------------------------------------------------------------------ live text
def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("text", [NO_CALL_ANSWER, "  Café, naïve — 東京 ok.  ", "line one\n\nline two"])
def test_live_text_token_by_token_adds_up_to_the_decoded_answer(engine, text):
    tok = engine.tokenizer
    ids = _ids(tok, text) + [tok.eos_token_id]
    stream = TextStream(tok, {tok.eos_token_id}, calls_possible=True)
    deltas = [stream.add([i]) for i in ids]
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True).strip()
    assert sum(1 for d in deltas if d) > 3  # it really streamed, not one piece at the end
    assert all("\ufffd" not in d for d in deltas)


def test_live_text_holds_back_anything_that_may_be_a_call(engine):
    tok = engine.tokenizer
    call = '[get_weather(city="Paris")]'
    stream = TextStream(tok, {tok.eos_token_id}, calls_possible=True)
    assert "".join(stream.add([i]) for i in _ids(tok, call)) == ""
    stream = TextStream(tok, {tok.eos_token_id}, calls_possible=True)
    assert "".join(stream.add([i]) for i in _ids(tok, f"Sure. {call}")) == "Sure."
    # tool_choice "none": a call is just text
    stream = TextStream(tok, {tok.eos_token_id}, calls_possible=False)
    assert "".join(stream.add([i]) for i in _ids(tok, call)) == tok.decode(_ids(tok, call)).strip()


# ------------------------------------------------------------------------------------------------ chunks
def _response(message: dict, finish: str) -> dict:
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish, "refinement": {"rounds": 2}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49},
            "toolace_r": {"refinement_rounds": 2, "max_refine_rounds": 3}}


def test_tool_call_chunks_follow_the_openai_contract_and_parse_as_the_sdks_chunks():
    from openai.types.chat import ChatCompletionChunk

    args = [json.dumps({"city": "Oslo", "unit": "c"}), json.dumps({"city": "Rome"})]
    calls = [{"id": f"call_{i}", "type": "function", "function": {"name": "get_weather", "arguments": a}}
             for i, a in enumerate(args)]
    writer = ChunkWriter("toolace-r", include_usage=True)
    lines = [writer.role(), *final_chunks(writer, _response({"role": "assistant", "content": None,
                                                             "tool_calls": calls}, "tool_calls"), "")]
    events = _events(lines)
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {writer.id} and all(c.object == "chat.completion.chunk" for c in chunks)
    # per call: index, id, type and name first (arguments ""), then argument fragments only
    first_of_call = [c.choices[0].delta.tool_calls[0] for c in chunks[1:] if c.choices and
                     c.choices[0].delta.tool_calls and c.choices[0].delta.tool_calls[0].id]
    assert [(t.index, t.id, t.type, t.function.name, t.function.arguments) for t in first_of_call] == [
        (0, "call_0", "function", "get_weather", ""), (1, "call_1", "function", "get_weather", "")]
    fragments = [c.choices[0].delta.tool_calls[0] for c in chunks[1:] if c.choices and
                 c.choices[0].delta.tool_calls and not c.choices[0].delta.tool_calls[0].id]
    assert len(fragments) > 2 and all(f.function.name is None and f.type is None for f in fragments)
    content, assembled, finish = _assemble(chunks)
    assert content == "" and finish == "tool_calls"
    assert assembled == [("call_0", "get_weather", args[0]), ("call_1", "get_weather", args[1])]
    # include_usage: every chunk has usage null, the last has the usage and no choices
    assert all(e["usage"] is None for e in events[:-2])
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 49
    assert events[-3]["toolace_r"]["refinement_rounds"] == 2


def test_content_already_streamed_is_not_sent_twice_and_usage_only_on_request():
    writer = ChunkWriter("toolace-r", include_usage=False)
    lines = [writer.role(), writer.chunk({"content": "None of the"}),
             *final_chunks(writer, _response({"role": "assistant", "content": NO_CALL_ANSWER}, "stop"),
                           "None of the")]
    events = _events(lines)
    assert all("usage" not in e for e in events[:-1])
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == NO_CALL_ANSWER and events[-2]["choices"][0]["finish_reason"] == "stop"


# ------------------------------------------------------------------------------------------------ engine hooks
@pytest.mark.slow
def test_the_streaming_hooks_report_every_token_and_change_no_answer(engine):
    """Tokens reported per (job, round) are exactly each round's answer; the outcomes equal those without hooks,
    and a job's final outcome is reported before the batch returns."""
    tools = _project_tools(OPENAI_TOOLS)
    chats = [PARIS, JOKE, [{"role": "user", "content": "Weather in Oslo and Rome?"}]]
    for rounds in (1, 3):
        plain = engine.run([Job(tools, m, rounds, 48, 0.0) for m in chats])
        seen: dict[tuple[int, int], list[int]] = {}
        finals: dict[int, Outcome] = {}
        jobs = []
        for j, m in enumerate(chats):
            job = Job(tools, m, rounds, 48, 0.0)
            job.on_tokens = lambda rnd, ids, j=j: bool(seen.setdefault((j, rnd), []).extend(ids))
            job.on_final = lambda out, j=j: finals.__setitem__(j, out)
            jobs.append(job)
        hooked = engine.run(jobs)
        assert hooked == plain == list(finals[j] for j in range(len(chats)))
        for j, out in enumerate(hooked):
            last = seen[(j, out.rounds)]
            assert engine.tokenizer.decode(last, skip_special_tokens=True).strip() == out.answer
            assert len([r for (k, r) in seen if k == j]) == out.rounds
        assert all(isinstance(o, Outcome) and o.calls is not None for o in hooked)


def test_the_decoder_hooks_are_output_neutral_on_a_random_model(engine):
    """An untrained model (answers differ every round, drafts mostly rejected, finished rows parked mid-round):
    with the hooks every round's answers, token counts and passes equal those without, and the reported ids are
    each round's ids."""
    import torch
    from transformers import AutoModelForCausalLM

    from toolace_r.refine import RefineItem, adaptive_refine

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(engine.model.config).eval()
    with torch.no_grad():  # sharper logits than the default init: fewer near-ties, answers that differ
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    tools = _project_tools(OPENAI_TOOLS)
    items = [RefineItem(tools, [{"role": "user", "content": "x " * i + "weather?"}]) for i in range(5)]
    kw = dict(max_rounds=3, max_new_tokens=12, style=engine.style, adaptive=False, max_rows=3)
    plain = adaptive_refine(model, engine.tokenizer, items, **kw)
    seen: dict[tuple[int, int], list[int]] = {}
    finals: dict[int, object] = {}
    hooked = adaptive_refine(model, engine.tokenizer, items, **kw,
                             on_tokens=lambda i, rnd, ids: bool(seen.setdefault((i, rnd), []).extend(ids)),
                             on_result=finals.__setitem__)
    assert hooked == plain and [finals[i] for i in range(len(items))] == plain
    assert len({r.answers[0] for r in plain}) > 1  # a real spread of answers, not one repeated string
    for i, res in enumerate(plain):
        for rnd, answer in enumerate(res.answers, 1):
            assert engine.tokenizer.decode(seen[(i, rnd)], skip_special_tokens=True).strip() == answer


@pytest.mark.slow
def test_a_gone_client_stops_its_decoding_and_not_its_neighbours(engine):
    tools = _project_tools(OPENAI_TOOLS)
    alone = engine.run([Job(tools, JOKE, 3, 48, 0.0)])[0]
    gone = Job(tools, JOKE, 3, 48, 0.0)
    gone.on_tokens = lambda rnd, ids: True  # the client left after the first pass
    neighbour = Job(tools, JOKE, 3, 48, 0.0)
    out_gone, out_neighbour = engine.run([gone, neighbour])
    assert out_neighbour == alone and alone.completion_tokens > 5
    assert out_gone.rounds == 1 and out_gone.completion_tokens == 1


# ------------------------------------------------------------------------------------------------ live server
def _post(server: str, body: dict, stream: bool = True) -> requests.Response:
    body = {"model": "toolace-r", "messages": PARIS, "tools": OPENAI_TOOLS, "stream": stream, **body}
    return requests.post(f"{server}/v1/chat/completions", json=body, stream=stream, timeout=120)


def _sse(resp: requests.Response) -> list:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    return _events([line + "\n" for line in resp.iter_lines(decode_unicode=True)])


@pytest.mark.slow
def test_a_streamed_tool_call_is_the_non_streamed_one_over_http(server):
    plain = _post(server, {}, stream=False).json()
    events = _sse(_post(server, {"stream_options": {"include_usage": True}}))
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finish = events[-3]
    assert finish["choices"][0]["finish_reason"] == "tool_calls" and finish["choices"][0]["delta"] == {}
    assert finish["toolace_r"] == plain["toolace_r"]  # adaptive refinement ran: 2 rounds, as non-streamed
    assert events[-2]["choices"] == [] and events[-2]["usage"] == plain["usage"]
    name = "".join(tc["function"].get("name") or "" for e in events[:-2] for tc in
                   e["choices"][0]["delta"].get("tool_calls") or [])
    args = "".join(tc["function"].get("arguments") or "" for e in events[:-2] for tc in
                   e["choices"][0]["delta"].get("tool_calls") or [])
    (call,) = plain["choices"][0]["message"]["tool_calls"]
    assert (name, json.loads(args)) == (call["function"]["name"], json.loads(call["function"]["arguments"]))


@pytest.mark.slow
def test_with_one_round_tokens_stream_as_they_are_decoded(server):
    body = {"messages": JOKE, "max_refine_rounds": 1}
    plain = _post(server, body, stream=False).json()
    events = _sse(_post(server, body))
    pieces = [e["choices"][0]["delta"].get("content") for e in events[1:-2]]
    assert "".join(pieces) == plain["choices"][0]["message"]["content"] == NO_CALL_ANSWER
    assert len(pieces) > 3  # several deltas as tokens arrived, not the answer in one piece
    assert events[-2]["choices"][0]["finish_reason"] == "stop" and "usage" not in events[-2]


@pytest.mark.slow
def test_errors_before_the_stream_starts_are_json(server):
    resp = _post(server, {"messages": JOKE, "tool_choice": "required", "max_tokens": 2})  # too short for any call
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "max_tokens"
    resp = _post(server, {"stream_options": {"include_usage": "yes"}})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "stream_options.include_usage"


@pytest.mark.slow
def test_a_client_that_disconnects_mid_stream_leaves_the_replica_serving(server):
    for _ in range(3):
        resp = _post(server, {"messages": JOKE, "max_refine_rounds": 1, "max_tokens": 48})
        lines = resp.iter_lines()
        next(lines)  # the role chunk arrived: the stream is live
        resp.close()
    health = requests.get(f"{server}/health", timeout=30).json()
    assert health["status"] == "ok"
    events = _sse(_post(server, {}))
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
