"""The Ray Serve application (toolace_r.serve.app): deployment options and the application builders (fast), then the
real app driven by the official `openai` client (slow): tool calls and content in the client's own types,
tool_choice, refinement rounds, auth, every kind of bad request, and autoscaling under a burst.

The served model is tests/serve_model.py's tiny Llama that has memorised a few dialogues, so greedy decoding really
produces tool calls through the real load + generate + refine path.
"""
from __future__ import annotations

import importlib.util
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from toolace_r.config import ServeConfig
from toolace_r.data.prompts import NO_CALL_ANSWER
from toolace_r.errors import ConfigError
from toolace_r.serve.app import deployment_options

from serve_model import OPENAI_TOOLS

from .common import JOKE, PARIS, app_for, client, running_replicas

REPO = Path(__file__).resolve().parents[2]


def test_deployment_options_come_from_the_serve_section():
    cfg = ServeConfig(model="m", min_replicas=1, max_replicas=3, target_ongoing_requests=2, num_cpus=2, num_gpus=1)
    opts = deployment_options(cfg)
    assert opts["autoscaling_config"]["max_replicas"] == 3
    assert opts["autoscaling_config"]["target_ongoing_requests"] == 2
    assert opts["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1}
    with pytest.raises(ConfigError):
        deployment_options(ServeConfig(model="m", min_replicas=3, max_replicas=2))


def test_jobs_serve_yaml_is_a_serve_config_whose_args_are_serve_keys():
    from ray.serve.schema import ServeDeploySchema

    from toolace_r import serve as serve_module

    raw = yaml.safe_load((REPO / "jobs" / "serve.yaml").read_text())
    ServeDeploySchema.model_validate(raw)
    (app,) = raw["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert module == "toolace_r.serve" and getattr(serve_module, attr) is serve_module.build_app
    assert set(app["args"]) <= set(ServeConfig.__dataclass_fields__)


def test_build_app_rejects_unknown_args_and_missing_models(tmp_path):
    from toolace_r.serve.app import build_app

    with pytest.raises(ConfigError, match="no_such_key"):
        build_app({"model": str(tmp_path), "no_such_key": 1})
    with pytest.raises(ConfigError, match="does not exist"):
        build_app({"model": str(tmp_path / "missing")})


@pytest.mark.slow
def test_a_tool_call_comes_back_in_the_clients_types(server):
    from openai.types.chat import ChatCompletionMessageToolCall

    resp = client(server).chat.completions.create(model="toolace-r", messages=PARIS, tools=OPENAI_TOOLS)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert isinstance(call, ChatCompletionMessageToolCall) and call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert resp.usage.prompt_tokens > 20 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    ext = resp.model_extra["toolace_r"]
    # refinement on by default: the model repeats its answer in round 2, which stops refinement
    assert ext["max_refine_rounds"] == ServeConfig().max_rounds
    assert ext["refinement_rounds"] == (2 if importlib.util.find_spec("toolace_r.refine") else 1)
    assert choice.model_extra["refinement"] == {"rounds": ext["refinement_rounds"]}


@pytest.mark.slow
def test_parallel_calls_and_a_dialogue_with_tool_turns(server):
    c = client(server)
    resp = c.chat.completions.create(model="toolace-r", tools=OPENAI_TOOLS,
                                     messages=[{"role": "user", "content": "Weather in Oslo and Rome?"}])
    calls = resp.choices[0].message.tool_calls
    assert [(t.function.name, json.loads(t.function.arguments)) for t in calls] == [
        ("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Rome"})]
    assert len({t.id for t in calls}) == 2
    first = calls[0]
    history = PARIS + [
        {"role": "assistant", "content": "", "tool_calls": [{"id": first.id, "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
        {"role": "tool", "tool_call_id": first.id, "content": json.dumps({"temp_c": 18})},
        {"role": "user", "content": "And in Lima?"},
    ]
    resp = c.chat.completions.create(model="toolace-r", tools=OPENAI_TOOLS, messages=history)
    assert json.loads(resp.choices[0].message.tool_calls[0].function.arguments) == {"city": "Lima"}


@pytest.mark.slow
def test_an_answer_without_a_call_comes_back_as_content(server):
    resp = client(server).chat.completions.create(model="toolace-r", messages=JOKE, tools=OPENAI_TOOLS)
    choice = resp.choices[0]
    assert choice.message.tool_calls is None and choice.message.content == NO_CALL_ANSWER
    assert choice.finish_reason == "stop"


@pytest.mark.slow
def test_tool_choice_named_required_and_none(server):
    """The model answers the joke without a call; tool_choice required / a named function make it call anyway, by
    constrained decoding (toolace_r.constrain): a valid call to an allowed function, required arguments present
    (this was a 422 before). Streamed, the same call arrives as tool-call chunks."""
    c = client(server)
    named = {"type": "function", "function": {"name": "get_weather"}}
    resp = c.chat.completions.create(model="toolace-r", messages=PARIS, tools=OPENAI_TOOLS, tool_choice=named)
    assert resp.choices[0].message.tool_calls[0].function.name == "get_weather"
    for choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
        resp = c.chat.completions.create(model="toolace-r", messages=JOKE, tools=OPENAI_TOOLS, tool_choice=choice)
        assert resp.choices[0].finish_reason == "tool_calls"
        calls = resp.choices[0].message.tool_calls
        assert calls and all(call.function.name in ("get_weather", "get_time") for call in calls)
        assert choice == "required" or {call.function.name for call in calls} == {"get_time"}
        for call in calls:
            arguments = json.loads(call.function.arguments)
            assert isinstance(arguments["city"], str) and set(arguments) <= {"city", "unit"}
            assert arguments.get("unit", "c") in ("c", "f")
    streamed = c.chat.completions.create(model="toolace-r", messages=JOKE, tools=OPENAI_TOOLS, tool_choice="required",
                                         stream=True)
    names = [tc.function.name for chunk in streamed for ch in chunk.choices for tc in ch.delta.tool_calls or []
             if tc.function and tc.function.name]
    assert names and set(names) <= {"get_weather", "get_time"}
    resp = c.chat.completions.create(model="toolace-r", messages=PARIS, tools=OPENAI_TOOLS, tool_choice="none")
    assert resp.choices[0].message.tool_calls is None and isinstance(resp.choices[0].message.content, str)


@pytest.mark.slow
def test_guided_keeps_calls_valid_and_still_allows_no_call(server):
    """extra_body={"guided": true} with tool_choice auto: the call the model makes is the same valid call; the joke
    still gets its no-call answer as content."""
    c = client(server)
    resp = c.chat.completions.create(model="toolace-r", messages=PARIS, tools=OPENAI_TOOLS,
                                     extra_body={"guided": True})
    (call,) = resp.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    resp = c.chat.completions.create(model="toolace-r", messages=JOKE, tools=OPENAI_TOOLS,
                                     extra_body={"guided": True})
    assert resp.choices[0].message.tool_calls is None and resp.choices[0].message.content == NO_CALL_ANSWER


@pytest.mark.slow
def test_max_refine_rounds_per_request(server):
    resp = client(server).chat.completions.create(model="toolace-r", messages=PARIS, tools=OPENAI_TOOLS,
                                                  extra_body={"max_refine_rounds": 1})
    assert resp.model_extra["toolace_r"] == {"refinement_rounds": 1, "max_refine_rounds": 1}
    assert resp.choices[0].message.tool_calls[0].function.name == "get_weather"


@pytest.mark.slow
def test_models_and_health(server):
    assert [m.id for m in client(server).models.list().data] == ["toolace-r"]
    health = requests.get(f"{server}/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"


BAD_REQUESTS = [
    # (name, raw body or dict, expected status, expected param or None)
    ("invalid JSON", b'{"model": "toolace-r", "messages": [', 400, None),
    ("not an object", b"[1, 2]", 400, None),
    ("wrong type", {"temperature": "hot"}, 400, "temperature"),
    ("unknown tool name in tool_choice", {"tools": OPENAI_TOOLS,
                                          "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     400, "tool_choice"),
    ("empty messages", {"messages": []}, 400, "messages"),
    ("stream_options without stream", {"stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("unknown model", {"model": "gpt-4o"}, 404, "model"),
    ("oversize body", {"messages": [{"role": "user", "content": "x" * 1_100_000}]}, 413, None),
]


@pytest.mark.slow
def test_each_bad_request_gets_its_status_and_an_openai_error_object(server):
    for name, body, status, param in BAD_REQUESTS:
        if isinstance(body, dict):
            body = json.dumps({"model": "toolace-r", "messages": PARIS, **body}).encode()
        resp = requests.post(f"{server}/v1/chat/completions", data=body, timeout=60,
                          headers={"content-type": "application/json"})
        assert resp.status_code == status, (name, resp.text)
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], name
        assert error["param"] == param, (name, error)
    missing = requests.get(f"{server}/v1/nothing-here", timeout=30)
    assert missing.status_code == 404 and "error" in missing.json()
    # the replica survived all of it
    resp = client(server).chat.completions.create(model="toolace-r", messages=PARIS, tools=OPENAI_TOOLS)
    assert resp.choices[0].message.tool_calls


@pytest.mark.slow
def test_bearer_token_auth(server, model_dir, monkeypatch):
    from openai import AuthenticationError
    from ray import serve

    monkeypatch.setenv("TOOLACE_TEST_KEY", "s3cret")  # read where the app is built; only its digest is shipped
    serve.run(app_for(model_dir, "serve.api_key_env=TOOLACE_TEST_KEY"), name="secure", route_prefix="/secure",
              blocking=False)
    try:
        base = f"{server}/secure"
        for key in ("wrong", ""):
            with pytest.raises(AuthenticationError) as err:
                client(base, key or "x").with_options(default_headers={"Authorization": key}).models.list()
            assert err.value.body["type"] == "authentication_error"
        resp = client(base, "s3cret").chat.completions.create(model="toolace-r", messages=PARIS, tools=OPENAI_TOOLS)
        assert resp.choices[0].message.tool_calls[0].function.name == "get_weather"
        # auth off: the default app takes any key
        assert client(server, "anything").models.list().data
    finally:
        serve.delete("secure")


@pytest.mark.slow
def test_a_burst_adds_a_replica_and_every_request_succeeds(server, model_dir):
    from ray import serve

    app = app_for(model_dir, "serve.max_replicas=2", "serve.target_ongoing_requests=1", "serve.upscale_delay_s=1",
                  "serve.downscale_delay_s=600", "serve.batching=false", "serve.max_ongoing_requests=4")
    serve.run(app, name="scale", route_prefix="/scale", blocking=False)
    try:
        assert running_replicas("scale") == 1
        c = client(f"{server}/scale")
        scaled = threading.Event()
        results: list[str] = []

        def worker() -> None:
            deadline = time.time() + 150
            while not scaled.is_set() and time.time() < deadline:
                resp = c.chat.completions.create(model="toolace-r", messages=PARIS, tools=OPENAI_TOOLS,
                                                 extra_body={"max_refine_rounds": 3})
                results.append(resp.choices[0].message.tool_calls[0].function.name)

        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(worker) for _ in range(12)]
            deadline = time.time() + 150
            while time.time() < deadline and running_replicas("scale") < 2:
                time.sleep(1)
            replicas = running_replicas("scale")
            scaled.set()
            for f in futures:
                f.result()  # re-raises any failed request
        assert replicas == 2, f"Serve did not add a replica within 150 s ({len(results)} requests served)"
        assert results and set(results) == {"get_weather"}
    finally:
        serve.delete("scale")


