"""Serve a tool-calling model behind an OpenAI-compatible `/v1/chat/completions`, on Ray Serve.

Agents that speak the OpenAI tools API point their client at this server and get `message.tool_calls` back; inside,
each answer goes through the paper's adaptive self-refinement (the model checks its own call and stops when two
rounds agree; toolace_r.refine).

Layout of a replica (one Ray Serve deployment, FastAPI ingress, autoscaled):

    HTTP → auth → body size → JSON → pydantic (OpenAI schema) → convert to the project's tools/messages → render the
    prompt and check its length  ──(everything above is per request and can only fail with a 4xx)──
    → BatchQueue → one worker thread runs adaptive_refine on the whole batch → parse calls → OpenAI response

The model is loaded once per replica; requests that arrive together share forward passes (`serve.batching`); the
model runs in one worker thread so the event loop keeps answering health checks and validating requests meanwhile.

Two ways to start it, one source of defaults (`ServeConfig` in toolace_r/config.py):
  - `toolace-r serve --model DIR [--config JOB.yaml] [--port N] [serve.key=value ...]`
  - `serve run jobs/serve.yaml` (a Ray Serve config file whose `import_path` is `toolace_r.serve:build_app`; its
    `args` are serve.* keys, plus optionally `config: JOB.yaml` and `overrides: [key=value, ...]`).

Decisions where the OpenAI API leaves room (all visible in the response or documented here):
  - `temperature` defaults to 0 (greedy): refinement stops when two rounds agree, which is what greedy decoding gives.
    Temperatures below MIN_SAMPLING_TEMPERATURE (1e-3) also decode greedily.
  - `tool_choice: "none"`: the model is prompted without the tools and its text comes back as `content`, never as
    `tool_calls`. `"required"` or a named function: when the final answer holds no (matching) call, the reply is a 422
    error (code `tool_choice_unsatisfied`) carrying the model's answer, instead of silently breaking the contract.
    A named function also restricts the tools the model sees to that one.
  - `max_tokens` (per refinement round) above `serve.max_new_tokens` is clamped to it; `stream: true` and `n > 1` are
    refused with 400; `parallel_tool_calls: false` keeps the first call; `top_p` and `seed` are accepted and ignored.
  - `usage.prompt_tokens` counts the round-1 prompt; `completion_tokens` every token generated over all rounds.
  - Extension fields: request `max_refine_rounds` (openai client: `extra_body={"max_refine_rounds": 1}`; 1 = a single
    pass, no refinement); response `choices[0].refinement = {"rounds": n}` and top-level `toolace_r` with the rounds,
    the cap used and, when the answer was a malformed call, the parse error.
"""

import asyncio
import hashlib
import hmac
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from toolace_r.config import Config, ServeConfig, load_config
from toolace_r.errors import CallParseError, ConfigError

log = logging.getLogger(__name__)

MAX_REFINE_ROUNDS_LIMIT = 16  # a request may ask for fewer or more rounds than the default, never more than this
# Temperatures in (0, this) decode greedily: the sampling distribution is already the argmax there, and dividing the
# logits by e.g. 1e-86 overflows to inf/nan inside sampling (found by tests/test_serve_fuzz.py: a 500 before).
MIN_SAMPLING_TEMPERATURE = 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# OpenAI request schema (the part of it a tool-calling model can honour)
# ---------------------------------------------------------------------------------------------------------------------
class _Model(BaseModel):
    # Unknown fields are ignored (clients send e.g. `user`, `metadata`); known fields must have the right type.
    model_config = ConfigDict(extra="ignore")


class TextPart(_Model):
    type: Literal["text"]
    text: str


Content = Union[str, list[TextPart]]


class FunctionDef(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(_Model):
    type: Literal["function"]
    function: FunctionDef


class CalledFunction(_Model):
    name: str
    arguments: str  # a JSON object, as text (OpenAI's wire format)


class ToolCall(_Model):
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class SystemMessage(_Model):
    role: Literal["system", "developer"]
    content: Content


class UserMessage(_Model):
    role: Literal["user"]
    content: Content


class AssistantMessage(_Model):
    role: Literal["assistant"]
    content: Content | None = None
    tool_calls: list[ToolCall] | None = None


class ToolMessage(_Model):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


Message = Annotated[Union[SystemMessage, UserMessage, AssistantMessage, ToolMessage], Field(discriminator="role")]


class NamedFunction(_Model):
    name: str


class NamedToolChoice(_Model):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_Model):
    model: str
    messages: list[Message] = Field(min_length=1)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    stream: bool | None = None
    seed: int | None = None
    # extension: cap on adaptive refinement rounds for this request (1 = one pass, no refinement)
    max_refine_rounds: int | None = Field(default=None, ge=1, le=MAX_REFINE_ROUNDS_LIMIT)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The OpenAI error object every 4xx/5xx carries (declared in the OpenAPI spec so clients and fuzzers can check
    error bodies too)."""
    error: ErrorDetail


class ResponseFunction(BaseModel):
    name: str
    arguments: str


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: ResponseFunction


class ResponseMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ResponseToolCall] | None = None


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: None = None
    refinement: dict[str, int]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    """What `completion_response` returns (documentation for /openapi.json; the handler builds the dict itself)."""
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    toolace_r: dict[str, Any]


# ---------------------------------------------------------------------------------------------------------------------
# Errors: every failure is an OpenAI error object {"error": {"message", "type", "param", "code"}}
# ---------------------------------------------------------------------------------------------------------------------
class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code, self.headers)


def error_response(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _loc(parts: tuple[Any, ...]) -> str:
    """pydantic error location → `messages[0].content`; union-member names (e.g. `user`, `str`) are dropped."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"str", "list[TextPart]", "function-after", "literal['none','auto','required']", "NamedToolChoice",
                      "system", "developer", "user", "assistant", "tool"}:
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_error(err: ValidationError) -> ApiError:
    errors = err.errors(include_url=False)
    first = _loc(tuple(errors[0]["loc"])) if errors else None
    details = "; ".join(f"{_loc(tuple(e['loc'])) or 'body'}: {e['msg']}" for e in errors[:5])
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return ApiError(400, f"invalid request: {details}{more}", param=first or None, code="invalid_value")


# ---------------------------------------------------------------------------------------------------------------------
# OpenAI ↔ project conversion (pure functions, unit-tested without Ray)
# ---------------------------------------------------------------------------------------------------------------------
def _text(content: Content | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def convert_tools(tools: list[ToolDef] | None) -> list[dict[str, Any]]:
    """OpenAI `{"type": "function", "function": {...}}` → the project's function schemas `{name, description,
    parameters}` (what prompts.system_prompt lists). Duplicate names are a client error."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools or []):
        fn = tool.function
        if fn.name in seen:
            raise ApiError(400, f"tools[{i}]: duplicate function name {fn.name!r}", param=f"tools[{i}].function.name")
        seen.add(fn.name)
        schema: dict[str, Any] = {"name": fn.name, "description": fn.description or ""}
        schema["parameters"] = fn.parameters if fn.parameters is not None else {"type": "object", "properties": {}}
        out.append(schema)
    return out


def convert_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """OpenAI messages → Sample-style messages: text content, assistant `tool_calls` as `[{name, arguments: dict}]`
    (the JSON argument strings are decoded here, so a broken one is the client's 400, not a model error)."""
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        role = "system" if msg.role == "developer" else msg.role
        item: dict[str, Any] = {"role": role, "content": _text(msg.content)}
        if isinstance(msg, AssistantMessage) and msg.tool_calls:
            calls = []
            for j, call in enumerate(msg.tool_calls):
                param = f"messages[{i}].tool_calls[{j}].function.arguments"
                try:
                    arguments = json.loads(call.function.arguments) if call.function.arguments.strip() else {}
                except json.JSONDecodeError as err:
                    raise ApiError(400, f"{param} is not valid JSON: {err}", param=param) from None
                if not isinstance(arguments, dict):
                    raise ApiError(400, f"{param} must be a JSON object, got {type(arguments).__name__}", param=param)
                calls.append({"name": call.function.name, "arguments": arguments})
            item["tool_calls"] = calls
        elif isinstance(msg, AssistantMessage) and msg.content is None:
            raise ApiError(400, f"messages[{i}]: an assistant message needs content or tool_calls",
                           param=f"messages[{i}].content")
        out.append(item)
    if all(m["role"] == "system" for m in out):
        raise ApiError(400, "messages hold no user turn: nothing to answer", param="messages")
    return out


def tool_choice_mode(req: ChatCompletionRequest, tools: list[dict[str, Any]]) -> tuple[str, str | None]:
    """("auto" | "none" | "required" | "named", function name or None). Unknown names and choices that need tools
    when none are given are client errors."""
    choice = req.tool_choice
    if choice is None:
        return ("auto", None)
    if isinstance(choice, NamedToolChoice):
        names = [t["name"] for t in tools]
        if choice.function.name not in names:
            raise ApiError(400, f"tool_choice names function {choice.function.name!r}, which is not among the tools "
                                f"{names}", param="tool_choice", code="unknown_tool")
        return ("named", choice.function.name)
    if choice == "required" and not tools:
        raise ApiError(400, "tool_choice is 'required' but no tools were given", param="tool_choice")
    return (choice, None)


def openai_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parsed calls → OpenAI `tool_calls` (calls.render_openai: `arguments` a JSON string), each with an id unique
    across requests (render_openai numbers them call_0, call_1, ...; a client's history needs them distinct)."""
    from toolace_r.calls import render_openai

    return [{**call, "id": f"call_{uuid.uuid4().hex[:24]}"} for call in render_openai(calls)]


# ---------------------------------------------------------------------------------------------------------------------
# The model side: one engine per replica, called from a single worker thread with a batch of jobs
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One validated request, ready for the model."""
    tools: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    max_rounds: int
    max_new_tokens: int
    temperature: float
    prompt_tokens: int = 0
    prompt_ids: list[int] | None = None  # the round-1 prompt, tokenised once when the request is checked


@dataclass
class Outcome:
    answer: str
    calls: list[dict[str, Any]] | None  # None = the answer was a malformed call attempt (see parse_error)
    rounds: int
    completion_tokens: int
    parse_error: str | None = None
    forward_passes: int = 0


def parse_answer(text: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(calls, None) or (None, reason) for a malformed call attempt. Plain prose parses to []."""
    from toolace_r.calls import parse_calls

    try:
        return parse_calls(text), None
    except CallParseError as err:
        return None, str(err)


@dataclass
class Engine:
    """Holds the model once and answers batches of jobs with adaptive refinement."""
    model: Any
    tokenizer: Any
    style: str
    draft_verify: bool = True
    reuse_prefix: bool = True
    context_limit: int = 0
    batches: int = field(default=0)

    @classmethod
    def load(cls, path: str, dtype: str = "auto", style: str = "", trust_remote_code: bool = False,
             draft_verify: bool = True, reuse_prefix: bool = True) -> "Engine":
        from toolace_r.models import load_model, read_meta

        model, tokenizer = load_model(path, dtype=dtype, trust_remote_code=trust_remote_code)
        style = read_meta(path).get("prompt_style", style or "toolace")
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        return cls(model, tokenizer, style, draft_verify, reuse_prefix, limit)

    def prompt(self, tools: list[dict[str, Any]], messages: list[dict[str, Any]]) -> str:
        from toolace_r.data.prompts import render_prompt

        return render_prompt(self.tokenizer, tools, messages, self.style)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def run(self, jobs: list[Job]) -> list[Outcome | BaseException]:
        """Answer a batch. Jobs with the same decoding settings share forward passes; a job that fails is retried
        alone so that one bad request cannot fail its batch neighbours (its exception is returned in its place)."""
        self.batches += 1
        results: list[Outcome | BaseException | None] = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.max_rounds, job.max_new_tokens, job.temperature), []).append(i)
        for (max_rounds, max_new_tokens, temperature), idx in groups.items():
            try:
                outs = self._answer([jobs[i] for i in idx], max_rounds, max_new_tokens, temperature)
            except Exception:  # noqa: BLE001 - isolate the culprit below
                if len(idx) == 1:
                    outs = None
                else:
                    log.exception("batch of %d failed; retrying its jobs one by one", len(idx))
                    outs = [self._one(jobs[i], max_rounds, max_new_tokens, temperature) for i in idx]
            if outs is None:
                outs = [self._one(jobs[i], max_rounds, max_new_tokens, temperature) for i in idx]
            for i, out in zip(idx, outs):
                results[i] = out
        return results  # type: ignore[return-value]

    def _one(self, job: Job, max_rounds: int, max_new_tokens: int, temperature: float) -> Outcome | BaseException:
        try:
            return self._answer([job], max_rounds, max_new_tokens, temperature)[0]
        except Exception as err:  # noqa: BLE001 - reported to that request as a 500
            log.exception("request failed inside the model")
            return err

    def _answer(self, jobs: list[Job], max_rounds: int, max_new_tokens: int, temperature: float) -> list[Outcome]:
        from toolace_r.refine import RefineItem, adaptive_refine

        items = [RefineItem(tools=j.tools, messages=j.messages, prompt_ids=j.prompt_ids) for j in jobs]
        results = adaptive_refine(self.model, self.tokenizer, items, max_rounds=max_rounds,
                                  max_new_tokens=max_new_tokens, style=self.style, draft_verify=self.draft_verify,
                                  reuse_prefix=self.reuse_prefix, temperature=temperature, batch_size=len(items))
        outs = []
        for res in results:
            calls, error = (res.calls, None) if res.calls is not None else parse_answer(res.answer)
            outs.append(Outcome(res.answer, calls, res.rounds, res.tokens, error, res.forward_passes))
        return outs


# ---------------------------------------------------------------------------------------------------------------------
class BatchQueue:
    """Continuous batching in front of the engine: requests that arrive while a batch runs wait here, and all of them
    (up to `max_batch_size`) form the next batch the moment the engine is free. A request that finds the engine idle
    waits at most `wait_s` for company (requests sent together by one agent or by a burst of clients).

    Why not `@serve.batch`: it forms a batch every `batch_wait_timeout_s` whether or not the model is free, and the
    batches queue behind the running one; at 16 concurrent clients its batches averaged 6 requests while the model was
    busy (benchmarks/serve_load.py). Here a batch is formed when the model can take it, so it holds everything that
    arrived during the previous one.
    """

    def __init__(self, run: Callable[[list[Job]], Awaitable[list[Outcome | BaseException]]], max_batch_size: int,
                 wait_s: float):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.run = run
        self.max_batch_size = max_batch_size
        self.wait_s = max(0.0, wait_s)
        self._pending: list[tuple[Job, asyncio.Future]] = []
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0  # batches run, and the jobs they held (mean batch size = jobs / batches)
        self.jobs = 0

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def submit(self, job: Job) -> Outcome | BaseException:
        """Queue one job and wait for its outcome (an exception object when the engine failed on it)."""
        loop = asyncio.get_running_loop()
        if self._arrived is None:
            self._arrived = asyncio.Event()
        future = loop.create_future()
        self._pending.append((job, future))
        self._arrived.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._serve_forever())
        return await future

    async def _serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        just_ran = False  # the pending requests arrived while a batch ran: they go at once, no waiting for company
        while True:
            while not self._pending:
                just_ran = False
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + (0.0 if just_ran else self.wait_s)
            while len(self._pending) < self.max_batch_size and loop.time() < deadline:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
                except asyncio.TimeoutError:
                    break
            batch = [(job, fut) for job, fut in self._pending[:self.max_batch_size] if not fut.done()]
            del self._pending[:self.max_batch_size]
            if not batch:  # every caller of this slice went away (client disconnects cancel their futures)
                continue
            self.batches += 1
            self.jobs += len(batch)
            try:
                outcomes = await self.run([job for job, _ in batch])
            except asyncio.CancelledError:  # the replica is shutting down: nobody of this batch may wait forever
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(RuntimeError("the replica's batch queue stopped"))
                raise
            except Exception as err:  # noqa: BLE001 - each waiting request gets a 500, the queue keeps serving
                log.exception("batch of %d failed outside the engine", len(batch))
                outcomes = [err] * len(batch)
            for (_, fut), outcome in zip(batch, outcomes, strict=True):
                if not fut.done():
                    fut.set_result(outcome)
            just_ran = True


# ---------------------------------------------------------------------------------------------------------------------
# Request handling (no Ray here: the deployment below only wires it to HTTP and the batch queue)
# ---------------------------------------------------------------------------------------------------------------------
def check_auth(request: Request, key_sha256: str | None) -> None:
    if not key_sha256:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    given = hashlib.sha256(token.strip().encode()).hexdigest() if scheme.lower() == "bearer" else ""
    if not hmac.compare_digest(given, key_sha256):
        raise ApiError(401, "missing or invalid API key: send `Authorization: Bearer <key>`",
                       type_="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """The body as JSON, refusing oversize bodies before reading them whole (Content-Length) or while reading."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {max_bytes}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"request body exceeds the limit of {max_bytes} bytes", code="body_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(400, "request body is empty; expected a JSON object", code="invalid_json")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"request body is not valid JSON: {err}", code="invalid_json") from None
    try:  # JSON may escape a lone UTF-16 surrogate ("\ud800"); tokenizers cannot encode it (was a 500)
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "request body holds a lone UTF-16 surrogate escape (e.g. \\ud800) in a string; "
                            "send valid Unicode text", code="invalid_json") from None
    return body


def build_job(req: ChatCompletionRequest, cfg: ServeConfig, engine: Engine) -> tuple[Job, str, str | None]:
    """Validate everything that can be validated before the model runs. Returns (job, tool_choice mode, name)."""
    if req.model != cfg.model_name:
        raise ApiError(404, f"model {req.model!r} does not exist; this server serves {cfg.model_name!r}",
                       param="model", code="model_not_found")
    if req.stream:
        raise ApiError(400, "stream=true is not supported by this server; send stream=false (the default)",
                       param="stream", code="unsupported_parameter")
    if req.n is not None and req.n > 1:
        raise ApiError(400, "n > 1 is not supported; send one request per answer", param="n",
                       code="unsupported_parameter")
    tools = convert_tools(req.tools)
    mode, name = tool_choice_mode(req, tools)
    messages = convert_messages(req.messages)
    if mode == "none":
        tools = []
    elif mode == "named":
        tools = [t for t in tools if t["name"] == name]
    max_new = min(req.max_completion_tokens or req.max_tokens or cfg.max_new_tokens, cfg.max_new_tokens)
    try:
        prompt = engine.prompt(tools, messages)
    except Exception as err:  # noqa: BLE001 - chat templates reject some role orders; that is the client's input
        raise ApiError(400, f"messages cannot be rendered with this model's chat template: {err}",
                       param="messages") from None
    prompt_ids = engine.tokenize(prompt)
    prompt_tokens = len(prompt_ids)
    if engine.context_limit and prompt_tokens + max_new > engine.context_limit:
        raise ApiError(400, f"the prompt has {prompt_tokens} tokens; with max_tokens={max_new} it exceeds the "
                            f"model's context of {engine.context_limit} tokens", param="messages",
                       code="context_length_exceeded")
    rounds = req.max_refine_rounds or cfg.max_rounds
    temperature = float(req.temperature or 0.0)
    job = Job(tools, messages, rounds, max_new, temperature if temperature >= MIN_SAMPLING_TEMPERATURE else 0.0,
              prompt_tokens, prompt_ids)
    return job, mode, name


def completion_response(out: Outcome, job: Job, mode: str, name: str | None, model_name: str,
                        parallel_tool_calls: bool | None) -> dict[str, Any]:
    calls = out.calls or []
    if mode == "none":
        calls = []
    if mode in ("required", "named"):
        wanted = [c for c in calls if mode == "required" or c["name"] == name]
        if not wanted:
            what = "a tool call" if mode == "required" else f"a call to {name!r}"
            raise ApiError(422, f"tool_choice demands {what}, but the model answered: {out.answer!r}",
                           type_="invalid_response_error", param="tool_choice", code="tool_choice_unsatisfied")
        calls = wanted
    if parallel_tool_calls is False:
        calls = calls[:1]
    if calls:
        message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": openai_tool_calls(calls)}
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": out.answer}
        # a malformed call that used its whole token budget was most likely cut off
        finish = "length" if out.parse_error and out.completion_tokens >= job.max_new_tokens else "stop"
    extension: dict[str, Any] = {"refinement_rounds": out.rounds, "max_refine_rounds": job.max_rounds}
    if out.parse_error:
        extension["parse_error"] = out.parse_error
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None,
                     "refinement": {"rounds": out.rounds}}],
        "usage": {"prompt_tokens": job.prompt_tokens, "completion_tokens": out.completion_tokens,
                  "total_tokens": job.prompt_tokens + out.completion_tokens},
        "toolace_r": extension,
    }


# ---------------------------------------------------------------------------------------------------------------------
# The Ray Serve deployment
# ---------------------------------------------------------------------------------------------------------------------
class _Api(FastAPI):
    """FastAPI whose /openapi.json also describes the chat request body: the handler reads and validates the body by
    hand (size limit first, then strict pydantic), so FastAPI cannot see the model; we add it to the spec here."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema:
            return self.openapi_schema
        schema = super().openapi()
        body = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in {**body.pop("$defs", {}), "ChatCompletionRequest": body}.items():
            if components.get(name, definition) != definition:
                raise RuntimeError(f"OpenAPI component {name!r} is defined twice with different schemas")
            components[name] = definition
        self.openapi_schema = schema
        return schema


api = _Api(title="toolace-r", description="OpenAI-compatible tool calling with adaptive self-refinement")

_ERROR_STATUSES = {400: "invalid request (JSON, types, values, unsupported options, context length)",
                   401: "missing or invalid API key", 404: "unknown model", 413: "request body too large",
                   422: "tool_choice could not be satisfied by the model's answer", 500: "the model failed"}
CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ChatCompletionResponse},
    **{code: {"model": ErrorResponse, "description": why} for code, why in _ERROR_STATUSES.items()},
}
CHAT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}}}


@api.exception_handler(ApiError)
async def _api_error(_request: Request, err: ApiError) -> JSONResponse:
    return err.response()


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
    type_ = "not_found_error" if err.status_code == 404 else "invalid_request_error"
    return error_response(err.status_code, str(err.detail), type_, code=None)


@api.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
    return error_response(400, f"invalid request: {err.errors()}", code="invalid_value")


@api.exception_handler(Exception)
async def _server_error(_request: Request, err: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return error_response(500, f"internal error: {type(err).__name__}: {err}", "server_error")


@serve.deployment
@serve.ingress(api)
class ToolaceServer:
    """One replica: the model, a batch queue in front of it, and the OpenAI routes."""

    def __init__(self, settings: dict[str, Any], api_key_sha256: str | None = None):
        self.cfg = ServeConfig(**settings["serve"])
        self.key_sha256 = api_key_sha256
        self.engine = Engine.load(self.cfg.model, dtype=settings.get("dtype", "auto"),
                                  style=settings.get("prompt_style", ""),
                                  trust_remote_code=settings.get("trust_remote_code", False),
                                  draft_verify=settings.get("draft_verify", True),
                                  reuse_prefix=settings.get("reuse_prefix", True))
        # One thread owns the model: batches run one after another, the event loop stays free for validation.
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="toolace-model")
        self.queue = BatchQueue(self._run, self.cfg.max_batch_size, self.cfg.batch_wait_timeout_s)
        log.info("replica ready: model %s (style %s), batching=%s max_batch_size=%d", self.cfg.model,
                 self.engine.style, self.cfg.batching, self.cfg.max_batch_size)

    async def _run(self, jobs: list[Job]) -> list[Outcome | BaseException]:
        return await asyncio.get_running_loop().run_in_executor(self.worker, self.engine.run, jobs)

    async def generate(self, job: Job) -> Outcome:
        out = await self.queue.submit(job) if self.cfg.batching else (await self._run([job]))[0]
        if isinstance(out, BaseException):
            raise ApiError(500, f"the model failed on this request: {type(out).__name__}: {out}", "server_error")
        return out

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.cfg.model_name, "batches": self.engine.batches,
                "queued": self.queue.queued, "mean_batch": self.queue.jobs / max(1, self.queue.batches)}

    @api.get("/v1/models", responses={401: {"model": ErrorResponse, "description": _ERROR_STATUSES[401]}})
    async def models(self, request: Request) -> dict[str, Any]:
        check_auth(request, self.key_sha256)
        return {"object": "list", "data": [{"id": self.cfg.model_name, "object": "model", "created": 0,
                                            "owned_by": "toolace-r"}]}

    @api.post("/v1/chat/completions", responses=CHAT_RESPONSES, openapi_extra=CHAT_BODY)
    async def chat_completions(self, request: Request) -> JSONResponse:
        check_auth(request, self.key_sha256)
        body = await read_json_body(request, self.cfg.max_body_bytes)
        if not isinstance(body, dict):
            raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
        try:
            req = ChatCompletionRequest.model_validate(body, strict=True)
        except ValidationError as err:
            raise validation_error(err) from None
        job, mode, name = build_job(req, self.cfg, self.engine)
        out = await self.generate(job)
        return JSONResponse(completion_response(out, job, mode, name, self.cfg.model_name, req.parallel_tool_calls))

    def check_health(self) -> None:
        """Serve's replica health check: a dead model thread makes the replica unhealthy (Serve replaces it)."""
        if self.worker._shutdown:  # noqa: SLF001 - ThreadPoolExecutor exposes no public flag
            raise RuntimeError("model worker thread is shut down")


# ---------------------------------------------------------------------------------------------------------------------
# Building the application: from the typed config (toolace-r serve) or from Serve config `args` (serve run)
# ---------------------------------------------------------------------------------------------------------------------
def _resolve_model(path: str) -> str:
    if not path:
        raise ConfigError("serve.model is empty: pass --model DIR (or `model:` in the Serve config's args)")
    local = Path(path).expanduser()
    if local.exists():
        return str(local.resolve())  # replicas may run in another working directory
    if path.startswith((".", "/", "~")):
        raise ConfigError(f"serve.model {path!r} does not exist")
    return path  # a hub name: from_pretrained resolves it


def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    """Autoscaling and resources of the replica deployment, from the serve section."""
    if cfg.min_replicas < 0 or cfg.max_replicas < max(1, cfg.min_replicas):
        raise ConfigError(f"serve.min_replicas={cfg.min_replicas} / serve.max_replicas={cfg.max_replicas}: need "
                          "0 <= min_replicas <= max_replicas and max_replicas >= 1")
    if cfg.batching and cfg.max_ongoing_requests < cfg.max_batch_size:
        log.warning("serve.max_ongoing_requests=%d < serve.max_batch_size=%d: batches can never fill",
                    cfg.max_ongoing_requests, cfg.max_batch_size)
    return {
        "autoscaling_config": {
            "min_replicas": cfg.min_replicas,
            "initial_replicas": max(1, cfg.min_replicas),
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
            "upscale_delay_s": cfg.upscale_delay_s,
            "downscale_delay_s": cfg.downscale_delay_s,
        },
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
    }


def api_key_digest(env_name: str) -> str | None:
    """sha256 of the key in env var `env_name`, or None (auth off). Only the digest travels to the replicas."""
    key = os.environ.get(env_name, "") if env_name else ""
    return hashlib.sha256(key.encode()).hexdigest() if key else None


def build_application(cfg: Config):
    """The Serve application for a full typed config (its `serve` section, plus model/refine settings)."""
    scfg = cfg.serve
    scfg.model = _resolve_model(scfg.model)
    settings = {
        "serve": asdict(scfg),
        "prompt_style": cfg.model.prompt_style,
        "dtype": cfg.model.dtype,
        "trust_remote_code": cfg.model.trust_remote_code,
        "draft_verify": cfg.refine.draft_verify,
        "reuse_prefix": cfg.refine.reuse_prefix,
    }
    digest = api_key_digest(scfg.api_key_env)
    log.info("serving %s as %r; auth %s", scfg.model, scfg.model_name,
             f"on (${scfg.api_key_env})" if digest else "off")
    return ToolaceServer.options(**deployment_options(scfg)).bind(settings, digest)


def build_app(args: dict[str, Any] | None = None):
    """Application builder for Serve config files (`import_path: toolace_r.serve:build_app`).

    `args` are serve-section keys (`model`, `max_replicas`, ...), plus optionally `config` (a toolace-r job YAML
    to start from) and `overrides` (a list of `key=value` for any section). Unknown keys are a ConfigError."""
    args = dict(args or {})
    job_yaml = args.pop("config", None)
    overrides = list(args.pop("overrides", []) or [])
    overrides += [f"serve.{key}={json.dumps(value) if not isinstance(value, str) else value}"
                  for key, value in args.items()]
    return build_application(load_config(job_yaml, overrides))


def serve_command(args, cfg: Config) -> int:
    """`toolace-r serve --model DIR [--config JOB.yaml] [--host H] [--port N] [serve.key=value ...]`: blocks."""
    import ray

    if getattr(args, "model", None):
        cfg.serve.model = args.model
    if getattr(args, "host", None):
        cfg.serve.host = args.host
    if getattr(args, "port", None):
        cfg.serve.port = args.port
    app = build_application(cfg)
    if not ray.is_initialized():
        ray.init(address=cfg.run.ray_address or None, include_dashboard=False)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(app, name="toolace-r", route_prefix=cfg.serve.route_prefix, blocking=False)
    base = f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route_prefix.rstrip('/')}"
    print(f"toolace-r serving {cfg.serve.model} as {cfg.serve.model_name!r} at {base}/v1 (Ctrl-C to stop)", flush=True)
    def stop(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # `kill`, Kubernetes, systemd: shut down as on Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down Serve", flush=True)
        serve.shutdown()
    return 0
