"""A served model as the model under evaluation: `toolace-r eval --model openai:URL[#model-name]`.

Any server that speaks OpenAI's chat-completions API with tools — this project's `toolace-r serve`, a vLLM server, a
hosted API — is evaluated through the same harness as a local model dir: each item's tools go out as OpenAI `tools`,
its dialogue as `messages` (assistant turns that called tools as `tool_calls`, tool results as `tool` turns), and
the reply is judged by the same judge (`Sample.verdict`, `eval.decoder`):

- `tool_calls` in the reply are converted to the project's call list by the server's own conversion code
  (toolace_r.serve.convert.convert_messages on the reply message) and judged as structured calls, the way BFCL judges
  function-calling models (no text decoding); arguments that are not a JSON object fail as a decoder failure. An
  ACEBench item, whose judge reads answer text, gets the calls rendered as its python-syntax answer.
- a reply without tool calls is judged by its text `content`, parsed the way this project's own answers are.

Refinement is the server's business: every item is ONE request, reported as the single pass and as the "refined"
answer alike (rounds = the server's own count where it reports one, as `toolace-r serve` does). To make a toolace-r
server answer in one pass, send `eval.endpoint.extra_body={max_refine_rounds: 1}`.

Requests run on a small thread pool (`eval.endpoint.concurrency`), each with a timeout; 408/409/429/5xx and lost
connections are retried with exponential backoff by the openai client (`eval.endpoint.max_retries`; it honours
Retry-After). Any other 4xx — the server refusing the item — stops the evaluation with an error naming the item and
quoting the server, as does a request still failing after its retries: a figure over the items that happened to get
through would not be the model's.

Decoding: `eval.generation.temperature` (0 = greedy) and `max_new_tokens` as `max_tokens`. Tools are sent with their
schemas as the data set has them (BFCL's `dict` / `float` types included, which this project's and vLLM's servers
accept; a strict API may refuse them, and says so in the error).
"""
from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from toolace_r.config import Config
from toolace_r.data.schema import Sample
from toolace_r.errors import ConfigError, ToolaceError

log = logging.getLogger(__name__)

PREFIX = "openai:"
NOTE = ("single pass: the endpoint answered each item in one request; refinement, if any, is the server's own "
        "(rounds as the server reports them)")


class EndpointError(ToolaceError):
    """The server refused an item or kept failing on it; the message names the item."""


def is_endpoint(model: str) -> bool:
    return str(model).startswith(PREFIX)


@dataclass(frozen=True)
class EndpointSpec:
    base_url: str  # what the openai client takes: ends in /v1 (or the API's own base path)
    model: str  # "" = ask the server (GET /models) and take the one it serves

    @classmethod
    def parse(cls, spec: str) -> "EndpointSpec":
        """`openai:http://host:8000/v1#my-model` → (base URL, model name). A URL without a path gets `/v1`."""
        if not is_endpoint(spec):
            raise ConfigError(f"not an endpoint model {spec!r}: expected openai:URL[#model-name]")
        url, _, model = spec[len(PREFIX):].partition("#")
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"--model {spec!r}: expected openai:http(s)://HOST[:PORT][/PATH][#model-name]")
        if parsed.path in ("", "/"):
            url = url.rstrip("/") + "/v1"
        return cls(url.rstrip("/"), model)


def openai_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The project's function schemas → OpenAI `tools`. The inverse of serve.convert.convert_tools (a toolace-r
    server turns these back into exactly `tools`, so it prompts its model as the in-process eval does)."""
    return [{"type": "function", "function": {"name": t["name"], "description": t.get("description") or "",
                                              "parameters": t.get("parameters") or {"type": "object",
                                                                                   "properties": {}}}}
            for t in tools]


def openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sample messages → OpenAI messages: an assistant turn's parsed `tool_calls` go out in OpenAI's form
    (serve.convert.openai_tool_calls, fresh ids), each following `tool` turn answers the next of those ids."""
    from toolace_r.serve.convert import openai_tool_calls

    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for i, msg in enumerate(messages):
        role, content = msg.get("role", "user"), msg.get("content") or ""
        if role == "assistant" and msg.get("tool_calls"):
            calls = openai_tool_calls(msg["tool_calls"])
            pending = [c["id"] for c in calls]
            out.append({"role": "assistant", "content": content or None, "tool_calls": calls})
        elif role == "tool":
            call_id = pending.pop(0) if pending else f"call_unmatched_{i}"
            out.append({"role": "tool", "content": content, "tool_call_id": call_id})
        else:
            out.append({"role": role, "content": content})
    return out


def reply_calls(message: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str | None]:
    """A reply message's `tool_calls` → (the project's call list, None) via serve.convert.convert_messages, or
    (None, why) when the server returned calls whose arguments are not a JSON object."""
    from toolace_r.serve.convert import convert_messages
    from toolace_r.serve.schema import ApiError, AssistantMessage

    try:
        converted = convert_messages([AssistantMessage.model_validate(
            {"role": "assistant", "content": message.get("content"), "tool_calls": message.get("tool_calls")})])
    except ApiError as err:
        return None, err.message
    except ValueError as err:  # pydantic: a tool call without name / arguments text
        return None, f"malformed tool_calls: {err.errors()[0]['msg'] if hasattr(err, 'errors') else err}"
    return converted[0].get("tool_calls") or [], None


class EndpointModel:
    """Answers samples by asking the endpoint; the same `answer(samples)` contract as evaluate.EvalActor's model."""

    def __init__(self, spec: str, cfg: Config):
        try:
            from openai import OpenAI
        except ImportError:  # pragma: no cover - a dependency of the project
            raise ConfigError("--model openai:... needs the openai package: pip install openai") from None
        ec = cfg.eval.endpoint
        if ec.concurrency < 1:
            raise ConfigError(f"eval.endpoint.concurrency must be >= 1, got {ec.concurrency}")
        self.spec = EndpointSpec.parse(spec)
        self.cfg, self.settings = cfg, ec
        key = os.environ.get(ec.api_key_env, "") if ec.api_key_env else ""
        self.client = OpenAI(base_url=self.spec.base_url, api_key=key or "none", timeout=float(ec.timeout_s),
                             max_retries=int(ec.max_retries))
        self.model = self.spec.model or self._served_model()
        self.pool = ThreadPoolExecutor(max_workers=int(ec.concurrency), thread_name_prefix="endpoint")
        log.info("eval: endpoint %s, model %r, %d request(s) in flight", self.spec.base_url, self.model,
                 ec.concurrency)

    def _served_model(self) -> str:
        try:
            ids = [m.id for m in self.client.models.list()]
        except Exception as err:  # noqa: BLE001 - any client failure: say what to do
            raise EndpointError(f"endpoint {self.spec.base_url}: could not list its models ({_describe(err)}); "
                                f"name one: --model openai:{self.spec.base_url}#MODEL") from None
        if not ids:
            raise EndpointError(f"endpoint {self.spec.base_url} serves no models")
        if len(ids) > 1:
            log.warning("endpoint %s serves %s; evaluating %r (name one with #MODEL)", self.spec.base_url, ids, ids[0])
        return ids[0]

    def request_body(self, sample: Sample) -> dict[str, Any]:
        """The chat-completions request for one item (what `client.chat.completions.create` is called with)."""
        gen = self.cfg.eval.generation
        body: dict[str, Any] = {"model": self.model, "messages": openai_messages(sample.messages),
                                "temperature": float(gen.temperature), "max_tokens": int(gen.max_new_tokens)}
        if sample.tools:
            body["tools"] = openai_tools(sample.tools)
        return body

    def ask(self, sample: Sample) -> dict[str, Any]:
        """One item → its answer row (first answer = answer: one pass), with the object the judge reads."""
        import openai

        body = self.request_body(sample)
        extra = dict(self.settings.extra_body or {})
        start = time.perf_counter()
        try:
            reply = self.client.chat.completions.create(**body, extra_body=extra or None).model_dump()
        except openai.APIStatusError as err:
            kind = "refused" if 400 <= err.status_code < 500 else "kept failing on"
            raise EndpointError(f"endpoint {self.spec.base_url} {kind} item {sample.id!r} ({sample.category}): "
                                f"HTTP {err.status_code}: {_describe(err)}") from None
        except openai.APIError as err:  # timeouts and connection errors after the retries
            raise EndpointError(f"endpoint {self.spec.base_url}: item {sample.id!r} ({sample.category}) got no "
                                f"answer after {self.settings.max_retries} retries: {_describe(err)}") from None
        choices = reply.get("choices") or []
        if not choices:
            raise EndpointError(f"endpoint {self.spec.base_url}: the reply to item {sample.id!r} has no choices")
        message = choices[0].get("message") or {}
        usage = reply.get("usage") or {}
        rounds = int(((choices[0].get("refinement") or {}).get("rounds")) or 1)
        if message.get("tool_calls"):
            calls, error = reply_calls(message)
            text = _calls_text(calls) if calls is not None else json.dumps(message["tool_calls"], ensure_ascii=False)
            judged: Any = message["tool_calls"] if calls is None else calls
        else:
            text, judged = str(message.get("content") or ""), None
        return {"first_answer": text, "answer": text, "answers": [text], "judged": judged, "rounds": rounds,
                "tokens": int(usage.get("completion_tokens") or 0), "forward_passes": 0,
                "time_s": time.perf_counter() - start}

    def answer(self, samples: list[Sample]) -> list[dict[str, Any]]:
        return list(self.pool.map(self.ask, samples))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


def judge(sample: Sample, judged: Any, text: str, decoder: str):
    """The verdict of an endpoint answer: structured calls (`judged`) by the AST checker, or the answer text for
    items whose judge reads text (ACEBench) and for replies without tool calls."""
    if judged is None or sample.scoring:
        return sample.verdict(text, decoder)
    return sample.verdict(judged, decoder)


def _calls_text(calls: list[dict[str, Any]]) -> str:
    """The calls as this project writes answers (python call syntax), for outputs.jsonl and text-reading judges."""
    from toolace_r.data.prompts import render_answer

    return render_answer(calls)


def _describe(err: Exception) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        detail = body.get("error", body)
        if isinstance(detail, dict) and detail.get("message"):
            param = f" (param {detail['param']})" if detail.get("param") else ""
            return f"{detail['message']}{param}"
    return str(getattr(err, "message", "") or err)
