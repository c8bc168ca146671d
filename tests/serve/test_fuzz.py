"""Fuzzing the live server from its own OpenAPI spec (issue 10, item 6).

schemathesis reads /openapi.json from the running Ray Serve app, generates request bodies from the spec (schema-valid
ones and deliberately invalid ones), sends them over loopback HTTP and checks every response: never a 5xx, a status
the spec declares, the declared content type, and a body that matches the declared schema — the chat completion for
200, the OpenAI error object for 400/401/404/413/422. Three in four generated bodies name the served model, so they get past
the 404 and reach rendering, the context check and the model itself.

Generation stays cheap: the app caps every answer at 8 new tokens (max_tokens above that is clamped) and serves the
cached tiny calling model. The seed is fixed (TOOLACE_FUZZ_SEED to vary it), so a CI failure replays.
"""
from __future__ import annotations

import collections
import os
import time

import pytest
import requests

from processes import free_port
from serve_model import calling_model

from .common import app_for

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CHAT_EXAMPLES = int(os.environ.get("TOOLACE_FUZZ_EXAMPLES", "1000"))
OTHER_EXAMPLES = 25  # /v1/models and /health each
FUZZ_SEED = int(os.environ.get("TOOLACE_FUZZ_SEED", "0"))
MODEL_NAME = "toolace-r"


@pytest.fixture(scope="module")
def fuzz_server(ray_local):
    """The real app with answers capped at 8 tokens, on a free loopback port; yields the base URL."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app_for(calling_model(), "serve.max_new_tokens=8", "serve.max_rounds=2"), name="fuzz",
                  route_prefix="/", blocking=False)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def response_checks():
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    return [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.slow
@pytest.mark.parametrize("fields, status", [
    # found by this fuzz: a positive temperature far below 1 overflowed the sampling logits → 500
    ({"temperature": 1.2780597639790849e-86}, 200),
    # a lone surrogate escape reached the tokenizer → 500
    ({"messages": [{"role": "user", "content": "weather \ud800 in Paris?"}]}, 400),
])
def test_inputs_the_fuzz_found_are_answered_without_a_5xx(fuzz_server, fields, status):
    import json

    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "What is the weather in Paris?"}], **fields}
    resp = requests.post(f"{fuzz_server}/v1/chat/completions", data=json.dumps(body), timeout=120,
                         headers={"content-type": "application/json"})
    assert resp.status_code == status, resp.text
    if status != 200:
        assert resp.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.slow
def test_openapi_spec_describes_the_request_body_and_error_responses(fuzz_server):
    spec = requests.get(f"{fuzz_server}/openapi.json", timeout=30).json()
    post = spec["paths"]["/v1/chat/completions"]["post"]
    body_ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = spec["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
    assert {"model", "messages"} <= set(body["required"]) and "tools" in body["properties"]
    for status in ("200", "400", "401", "404", "413", "422"):
        assert post["responses"][status]["content"]["application/json"]["schema"]["$ref"], status
    assert post["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


def run_fuzz(schema, path: str, method: str, examples: int, base: str, stats: collections.Counter,
             failures: list[str], name_model: bool) -> None:
    from schemathesis import GenerationMode
    from schemathesis.core.failures import FailureGroup

    operation = schema[path][method]
    cases = st.one_of(operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
                      operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    checks = response_checks()
    session = requests.Session()

    @seed(FUZZ_SEED)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=cases, served_model=st.integers(0, 3).map(bool))  # 3 in 4 name the served model
    def fuzz(case, served_model):
        if name_model and served_model and isinstance(case.body, dict):
            case.body["model"] = MODEL_NAME  # reach the model, not just the 404
        response = case.call(base_url=base, session=session, timeout=120)
        stats[response.status_code] += 1
        if response.status_code == 200 and path == "/v1/chat/completions":
            stats["answered by the model"] += 1
        try:
            case.validate_response(response, checks=checks)
        except (Exception, FailureGroup) as err:  # noqa: BLE001 - collect every failing case, report them together
            failures.append(f"{method} {path} → {response.status_code}: {err}"[:3000])

    fuzz()


@pytest.mark.slow
def test_fuzzed_requests_never_5xx_and_always_match_the_schema(fuzz_server):
    schema = schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json")
    stats: collections.Counter = collections.Counter()
    failures: list[str] = []
    start = time.time()
    run_fuzz(schema, "/v1/chat/completions", "POST", CHAT_EXAMPLES, fuzz_server, stats, failures, name_model=True)
    run_fuzz(schema, "/v1/models", "GET", OTHER_EXAMPLES, fuzz_server, stats, failures, name_model=False)
    run_fuzz(schema, "/health", "GET", OTHER_EXAMPLES, fuzz_server, stats, failures, name_model=False)
    sent = sum(v for k, v in stats.items() if isinstance(k, int))
    print(f"\nfuzz: {sent} requests in {time.time() - start:.0f}s, statuses "
          f"{dict(sorted((k, v) for k, v in stats.items() if isinstance(k, int)))}, "
          f"{stats['answered by the model']} answered by the model, {len(failures)} failing")
    assert not failures, f"{len(failures)} of {sent} fuzzed requests failed a check:\n" + "\n\n".join(failures[:5])
    assert sent >= CHAT_EXAMPLES
    assert not any(500 <= k < 600 for k in stats if isinstance(k, int))
    # the fuzz reached the model, not only the validators
    assert stats["answered by the model"] >= 20, dict(stats)
    assert stats[400] >= 50, dict(stats)
