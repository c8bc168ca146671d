"""Helpers shared by the serving tests: the prompts the memorising model (tests/serve_model.py) answers, a validated
request, and for the tests that run the real app on Ray Serve: the typed config → application, an openai client, the
replica count."""
from __future__ import annotations

from pathlib import Path

from toolace_r.config import load_config
from toolace_r.serve.schema import ChatCompletionRequest

PARIS = [{"role": "user", "content": "What is the weather in Paris?"}]
JOKE = [{"role": "user", "content": "Tell me a joke."}]


def request(**fields) -> ChatCompletionRequest:
    body = {"model": "toolace-r", "messages": PARIS, **fields}
    return ChatCompletionRequest.model_validate(body, strict=True)


def app_for(model_dir: Path, *overrides: str):
    from toolace_r.serve.app import build_application

    return build_application(load_config(None, [f"serve.model={model_dir}", "serve.num_cpus=0.25",
                                                "serve.min_replicas=1", "serve.max_replicas=1", *overrides]))


def client(base: str, key: str = "unused"):
    from openai import OpenAI

    return OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)


def running_replicas(app: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in status.deployments.values())
