"""The OpenAI-compatible server: request conversion and validation (fast), then the real Ray Serve app driven by the
official `openai` client (slow): tool calls and content in the client's own types, tool_choice, refinement rounds,
auth, every kind of bad request, and autoscaling under a burst.

The served model is tests/serve_model.py's tiny Llama that has memorised a few dialogues, so greedy decoding really
produces tool calls through the real load + generate + refine path.
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from pydantic import ValidationError

from toolace_r.config import ServeConfig, load_config
from toolace_r.data.prompts import NO_CALL_ANSWER
from toolace_r.errors import ConfigError
from toolace_r.serve import (
    ApiError,
    BatchQueue,
    ChatCompletionRequest,
    convert_messages,
    convert_tools,
    deployment_options,
    tool_choice_mode,
    validation_error,
)

from serve_model import OPENAI_TOOLS, WEATHER_TOOL, calling_model

REPO = Path(__file__).resolve().parents[1]
PARIS = [{"role": "user", "content": "What is the weather in Paris?"}]
JOKE = [{"role": "user", "content": "Tell me a joke."}]


def request(**fields) -> ChatCompletionRequest:
    body = {"model": "toolace-r", "messages": PARIS, **fields}
    return ChatCompletionRequest.model_validate(body, strict=True)


# ------------------------------------------------------------------------------------------- conversion (fast)
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


@pytest.mark.parametrize("fields, param", [
    ({"temperature": "hot"}, "temperature"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0]"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"max_refine_rounds": 0}, "max_refine_rounds"),
    ({"stream": "yes"}, "stream"),
])
def test_wrong_types_name_the_field(fields, param):
    with pytest.raises(ValidationError) as err:
        request(**fields)
    api = validation_error(err.value)
    assert api.status == 400 and api.param == param, api.message


def test_responses_follow_tool_choice_and_report_rounds():
    from toolace_r.serve import Job, Outcome, completion_response

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
    from toolace_r.serve import build_app

    with pytest.raises(ConfigError, match="no_such_key"):
        build_app({"model": str(tmp_path), "no_such_key": 1})
    with pytest.raises(ConfigError, match="does not exist"):
        build_app({"model": str(tmp_path / "missing")})


# ------------------------------------------------------------------------------------------- the live server (slow)
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return calling_model()


def app_for(model_dir: Path, *overrides: str):
    from toolace_r.serve import build_application

    return build_application(load_config(None, [f"serve.model={model_dir}", "serve.num_cpus=0.25",
                                                "serve.min_replicas=1", "serve.max_replicas=1", *overrides]))


@pytest.fixture(scope="module")
def server(ray_local, model_dir):
    """Serve on a free 127.0.0.1 port with the default app at /; yields the base URL. Shuts Serve down after."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app_for(model_dir), name="toolace-test", route_prefix="/", blocking=False)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def client(base: str, key: str = "unused"):
    from openai import OpenAI

    return OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)


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
    from openai import UnprocessableEntityError

    c = client(server)
    named = {"type": "function", "function": {"name": "get_weather"}}
    resp = c.chat.completions.create(model="toolace-r", messages=PARIS, tools=OPENAI_TOOLS, tool_choice=named)
    assert resp.choices[0].message.tool_calls[0].function.name == "get_weather"
    with pytest.raises(UnprocessableEntityError) as err:  # the model answers the joke without a call
        c.chat.completions.create(model="toolace-r", messages=JOKE, tools=OPENAI_TOOLS, tool_choice="required")
    assert err.value.body["code"] == "tool_choice_unsatisfied"
    resp = c.chat.completions.create(model="toolace-r", messages=PARIS, tools=OPENAI_TOOLS, tool_choice="none")
    assert resp.choices[0].message.tool_calls is None and isinstance(resp.choices[0].message.content, str)


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
    ("stream", {"stream": True}, 400, "stream"),
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


def running_replicas(app: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in status.deployments.values())


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


@pytest.mark.slow
def test_a_failing_job_does_not_fail_its_batch_neighbours(model_dir):
    """Inside a replica: a job the model code rejects (here max_rounds=0, refused by adaptive_refine) gets its own
    exception back (→ 500 for that request only); the others in the same batch are answered."""
    from serve_model import _project_tools
    from toolace_r.serve import Engine, Job, Outcome

    engine = Engine.load(str(model_dir), dtype="float32")
    tools = _project_tools(OPENAI_TOOLS)
    good = Job(tools, PARIS, 3, 32, 0.0)
    bad = Job(tools, PARIS, 0, 32, 0.0)
    results = engine.run([good, bad, good])
    assert isinstance(results[1], Exception)
    assert all(isinstance(r, Outcome) and r.calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
               for r in (results[0], results[2]))


# ------------------------------------------------------------------------------------------------ batch queue
def _queue_run(delay_s: float, calls: list[list[str]], fail: bool = False):
    """An engine stand-in for the queue's scheduling only (the engine itself is exercised above): records each batch,
    takes `delay_s` like a forward pass would, answers each job with its own name."""
    async def run(jobs):
        calls.append([j for j in jobs])
        await asyncio.sleep(delay_s)
        if fail:
            raise RuntimeError("engine thread died")
        return [f"out:{j}" for j in jobs]

    return run


def test_batch_queue_puts_everything_that_arrived_during_a_batch_into_the_next():
    async def scenario():
        calls: list[list[str]] = []
        queue = BatchQueue(_queue_run(0.2, calls), max_batch_size=4, wait_s=0.0)
        first = asyncio.create_task(queue.submit("a"))
        await asyncio.sleep(0.05)  # "a" runs alone; these six arrive while it runs
        rest = [asyncio.create_task(queue.submit(x)) for x in "bcdefg"]
        outs = await asyncio.gather(first, *rest)
        return calls, outs

    calls, outs = asyncio.run(scenario())
    assert outs == [f"out:{x}" for x in "abcdefg"]  # each caller gets its own answer
    assert calls == [["a"], ["b", "c", "d", "e"], ["f", "g"]]  # full batches, capped at max_batch_size, in order


def test_batch_queue_lone_request_waits_at_most_wait_s_and_bursts_share_a_batch():
    async def scenario():
        calls: list[list[str]] = []
        queue = BatchQueue(_queue_run(0.0, calls), max_batch_size=8, wait_s=0.05)
        t0 = time.perf_counter()
        await queue.submit("alone")
        lone = time.perf_counter() - t0
        burst = [asyncio.create_task(queue.submit(x)) for x in "xyz"]
        await asyncio.sleep(0.01)
        late = asyncio.create_task(queue.submit("w"))  # within the idle wait: joins the burst's batch
        await asyncio.gather(*burst, late)
        return calls, lone

    calls, lone = asyncio.run(scenario())
    assert 0.04 <= lone < 0.5, lone
    assert calls == [["alone"], ["x", "y", "z", "w"]]


def test_batch_queue_engine_failure_reaches_every_waiting_request_and_the_queue_goes_on():
    async def scenario():
        calls: list[list[str]] = []
        queue = BatchQueue(_queue_run(0.0, calls, fail=True), max_batch_size=4, wait_s=0.0)
        failed = await asyncio.gather(queue.submit("a"), queue.submit("b"))
        queue.run = _queue_run(0.0, calls)
        return failed, await queue.submit("c")

    failed, after = asyncio.run(scenario())
    assert all(isinstance(f, RuntimeError) for f in failed)
    assert after == "out:c"


def test_batch_queue_requests_that_waited_for_a_busy_model_do_not_wait_again():
    """The idle wait is for a model with nothing to do: requests that queued behind a running batch go at once."""
    async def scenario():
        calls: list[list[str]] = []
        queue = BatchQueue(_queue_run(0.1, calls), max_batch_size=2, wait_s=0.5)
        first = [asyncio.create_task(queue.submit(x)) for x in "ab"]  # a full batch: no wait
        await asyncio.sleep(0.02)
        t0 = time.perf_counter()
        await queue.submit("c")  # queued behind [a, b]: runs when they finish, without the 0.5 s idle wait
        waited = time.perf_counter() - t0
        await asyncio.gather(*first)
        return calls, waited

    calls, waited = asyncio.run(scenario())
    assert calls == [["a", "b"], ["c"]]
    assert waited < 0.4, waited


def test_batch_queue_a_caller_that_goes_away_does_not_disturb_the_others():
    async def scenario():
        calls: list[list[str]] = []
        queue = BatchQueue(_queue_run(0.1, calls), max_batch_size=4, wait_s=0.0)
        running = asyncio.create_task(queue.submit("a"))
        await asyncio.sleep(0.02)
        waiting = {x: asyncio.create_task(queue.submit(x)) for x in "bcd"}
        await asyncio.sleep(0.02)
        waiting["c"].cancel()  # client disconnected while queued behind "a"
        out = await asyncio.gather(running, waiting["b"], waiting["d"])
        return calls, out, queue

    calls, out, queue = asyncio.run(scenario())
    assert out == ["out:a", "out:b", "out:d"]
    assert calls == [["a"], ["b", "d"]]  # the cancelled request never reached the model
    assert (queue.batches, queue.jobs) == (2, 3)
