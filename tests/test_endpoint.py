"""`--model openai:URL[#name]`: a served model through the same harness.

Fast: the request an item becomes (tools and dialogue survive the server's own conversion unchanged), and the
client's behaviour against a small local HTTP server written here — retries on 429/5xx, an error naming the item on
a 4xx, tool_calls judged as calls and plain content parsed like our own answers. Slow: a live `toolace-r serve` on
the memorising tiny model, whose accuracy through the endpoint equals the in-process single pass on the same items.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from toolace_r import io as rio
from toolace_r.config import load_config
from toolace_r.data.schema import Sample, calls_to_truth
from toolace_r.endpoint import EndpointError, EndpointSpec, openai_messages, openai_tools, reply_calls
from toolace_r.errors import ConfigError
from toolace_r.evaluate import evaluate

TOOLS = [
    {"name": "get_weather", "description": "Current weather for a city.",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                    "required": ["city"]}},
    {"name": "get_time", "description": "Local time in a city.",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
]


def _item(sid: str, text: str, calls: list[dict], category: str = "") -> Sample:
    return Sample(id=sid, tools=TOOLS, messages=[{"role": "user", "content": text}], truth=calls_to_truth(calls),
                  category=category)


def test_spec_parsing():
    assert EndpointSpec.parse("openai:http://127.0.0.1:8000#toolace-r") == EndpointSpec("http://127.0.0.1:8000/v1",
                                                                                         "toolace-r")
    assert EndpointSpec.parse("openai:https://api.example.com/v1/") == EndpointSpec("https://api.example.com/v1", "")
    with pytest.raises(ConfigError, match="openai:http"):
        EndpointSpec.parse("openai:localhost:8000")


def test_tools_and_dialogue_survive_the_servers_own_conversion():
    """What the endpoint sends, read back by toolace_r.serve.convert, is the item's tools and messages exactly: a
    toolace-r server prompts its model as the in-process evaluation does."""
    from toolace_r.serve.convert import convert_messages, convert_tools
    from toolace_r.serve.schema import ChatCompletionRequest

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}},
                                                            {"name": "get_time", "arguments": {"city": "Paris"}}]},
        {"role": "tool", "content": '{"temp_c": 18}'},
        {"role": "tool", "content": '{"time": "12:00"}'},
        {"role": "user", "content": "And in Lima?"},
    ]
    wire = openai_messages(messages)
    assert [m.get("tool_call_id") for m in wire[3:5]] == [c["id"] for c in wire[2]["tool_calls"]]
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": wire, "tools": openai_tools(TOOLS)})
    assert convert_tools(req.tools) == TOOLS
    assert convert_messages(req.messages) == messages


def test_reply_tool_calls_become_the_projects_calls():
    msg = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}
    assert reply_calls(msg) == ([{"name": "get_weather", "arguments": {"city": "Oslo"}}], None)
    broken = {"role": "assistant", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '["Oslo"]'}}]}
    calls, why = reply_calls(broken)
    assert calls is None and "JSON object" in why


class _FakeServer:
    """A minimal OpenAI-compatible server: answers by the last user turn; fails as told first."""

    def __init__(self, fail_first: list[int] | None = None, refuse: str = ""):
        self.fail_first, self.refuse, self.bodies = list(fail_first or []), refuse, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                text = body["messages"][-1]["content"]
                if outer.fail_first:
                    return self._send(outer.fail_first.pop(0), {"error": {"message": "busy", "type": "x"}},
                                      {"Retry-After": "0"})
                if outer.refuse and outer.refuse in text:
                    return self._send(400, {"error": {"message": "tools[0].function.parameters: bad schema",
                                                      "type": "invalid_request_error", "param": "tools"}})
                if "weather" in text:
                    city = text.rstrip("?").split()[-1]
                    message = {"role": "assistant", "content": None, "tool_calls": [{
                        "id": "c1", "type": "function",
                        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}]}
                elif "time" in text:  # a call written as text content: parsed like our own answers
                    message = {"role": "assistant", "content": "[get_time(city='Lima')]"}
                else:
                    message = {"role": "assistant", "content": "I cannot help with that."}
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})

            def _send(self, status, obj, headers=None):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


ITEMS = [
    _item("w1", "What is the weather in Paris?", [{"name": "get_weather", "arguments": {"city": "Paris"}}]),
    _item("w2", "What is the weather in Rome?", [{"name": "get_weather", "arguments": {"city": "Oslo"}}]),
    _item("t1", "What time is it in Lima?", [{"name": "get_time", "arguments": {"city": "Lima"}}]),
    _item("j1", "Tell me a joke.", [], "irrelevance"),
]


def _cfg(*extra):
    return load_config(None, ["eval.endpoint.concurrency=2", "eval.endpoint.max_retries=3", *extra])


def test_endpoint_answers_are_judged_by_the_same_checker_after_retries(tmp_path):
    server = _FakeServer(fail_first=[503, 429])
    try:
        rio.write_samples(tmp_path / "items.jsonl", ITEMS)
        result = evaluate(_cfg("eval.endpoint.extra_body={max_refine_rounds: 1}"), f"openai:{server.url}#fake",
                          [str(tmp_path / "items.jsonl")], str(tmp_path / "out"))
    finally:
        server.close()
    rows = {r["id"]: r for r in rio.read_jsonl(tmp_path / "out" / "outputs.jsonl")}
    assert {k: r["valid"] for k, r in rows.items()} == {"w1": True, "w2": False, "t1": True, "j1": True}
    assert rows["w2"]["error_type"] == "value_error:string"  # the AST checker's verdict on the structured call
    assert rows["w1"]["answer"] == '[get_weather(city="Paris")]' and rows["w1"]["tokens"] == 7
    assert result["overall"]["accuracy"] == result["overall"]["refined_accuracy"] == 0.75
    assert len(server.bodies) == 4 + 2  # two failed attempts, retried
    body = server.bodies[-1]
    assert body["model"] == "fake" and body["temperature"] == 0.0 and body["max_refine_rounds"] == 1
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather", "get_time"]
    metrics = rio.read_json(tmp_path / "out" / "metrics.json")
    assert metrics["endpoint"]["model"] == "fake" and "single pass" in metrics["endpoint"]["note"]


def test_a_refused_item_stops_the_evaluation_with_its_name(tmp_path):
    server = _FakeServer(refuse="Rome")
    try:
        rio.write_samples(tmp_path / "items.jsonl", ITEMS)
        with pytest.raises(EndpointError, match=r"refused item 'w2'.*HTTP 400.*bad schema \(param tools\)"):
            evaluate(_cfg(), f"openai:{server.url}#fake", [str(tmp_path / "items.jsonl")], str(tmp_path / "out"))
    finally:
        server.close()
    assert sum("Rome" in b["messages"][-1]["content"] for b in server.bodies) == 1  # a 4xx is not retried


def test_a_server_that_keeps_failing_names_the_item(tmp_path):
    server = _FakeServer(fail_first=[500] * 10)
    try:
        rio.write_samples(tmp_path / "items.jsonl", ITEMS[:1])
        with pytest.raises(EndpointError, match=r"kept failing on item 'w1'.*HTTP 500"):
            evaluate(_cfg("eval.endpoint.max_retries=1"), f"openai:{server.url}#fake",
                     [str(tmp_path / "items.jsonl")], str(tmp_path / "out"))
    finally:
        server.close()
    assert len(server.bodies) == 2


# ------------------------------------------------------------------------------------------ live toolace-r serve
@pytest.mark.slow
def test_live_serve_matches_the_in_process_single_pass(ray_local, tmp_path):
    """The memorising model (tests/serve_model.py) served by `toolace-r serve`'s application, single pass per
    request (max_refine_rounds 1); the same items evaluated in-process with eval.max_rounds=1: same answers, same
    accuracy. Items: the model's own examples (right), the same dialogues with other gold calls (wrong)."""
    from ray import serve

    from processes import free_port
    from serve.common import app_for
    from serve_model import EXAMPLES, _project_tools, calling_model

    items = []
    for i, (tools, messages, calls) in enumerate(EXAMPLES):
        ptools = _project_tools(tools)
        items.append(Sample(id=f"right{i}", tools=ptools, messages=messages, truth=calls_to_truth(calls or [])))
        other = [{"name": "get_time", "arguments": {"city": "Quito"}}]
        items.append(Sample(id=f"wrong{i}", tools=ptools, messages=messages, truth=calls_to_truth(other)))
    rio.write_samples(tmp_path / "items.jsonl", items)
    spec = [str(tmp_path / "items.jsonl")]
    model = calling_model()
    cfg = load_config(None, ["eval.num_actors=0", "eval.max_rounds=1", "eval.generation.max_new_tokens=48",
                             "eval.endpoint.extra_body={max_refine_rounds: 1}", "eval.endpoint.concurrency=3"])
    local = evaluate(cfg, str(model), spec, str(tmp_path / "local"))

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app_for(model), name="toolace-endpoint-test", route_prefix="/", blocking=False)
        remote = evaluate(cfg, f"openai:http://127.0.0.1:{port}", spec, str(tmp_path / "remote"))
    finally:
        serve.shutdown()
    by_id = lambda d: {r["id"]: r for r in rio.read_jsonl(tmp_path / d / "outputs.jsonl")}  # noqa: E731
    here, there = by_id("local"), by_id("remote")
    assert {k: r["valid"] for k, r in there.items()} == {k: r["valid"] for k, r in here.items()}
    assert remote["overall"]["accuracy"] == local["overall"]["accuracy"]
    assert 0 < local["overall"]["accuracy"] < 1
    assert all(r["rounds"] == 1 for r in there.values())  # the server reported one round per request
    assert rio.read_json(tmp_path / "remote" / "metrics.json")["endpoint"]["model"] == "toolace-r"
