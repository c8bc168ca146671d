"""OpenAI ↔ project conversion: request messages and tools → the project's prompt inputs (a `Job` for the engine,
with every check that can run before the model does), and the engine's `Outcome` → the OpenAI response.

Pure functions, unit-tested without Ray; each failure is an ApiError (4xx) naming the request field at fault.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from toolace_r.config import ServeConfig
from toolace_r.serve.body import parse_json
from toolace_r.serve.model import Job, Outcome, ServingModel
from toolace_r.serve.schema import (
    AssistantMessage,
    ApiError,
    ChatCompletionRequest,
    Content,
    NamedToolChoice,
    ToolDef,
)

# Temperatures in (0, this) decode greedily: the sampling distribution is already the argmax there, and dividing the
# logits by e.g. 1e-86 overflows to inf/nan inside sampling (found by tests/serve/test_fuzz.py: a 500 before).
MIN_SAMPLING_TEMPERATURE = 1e-3


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
    (the JSON argument strings are decoded here, with the body's limits, so a broken one is the client's 400, not a
    model error)."""
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        role = "system" if msg.role == "developer" else msg.role
        item: dict[str, Any] = {"role": role, "content": _text(msg.content)}
        if isinstance(msg, AssistantMessage) and msg.tool_calls:
            calls = []
            for j, call in enumerate(msg.tool_calls):
                param = f"messages[{i}].tool_calls[{j}].function.arguments"
                text = call.function.arguments
                arguments = parse_json(text, where=param, param=param) if text.strip() else {}
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



def build_job(req: ChatCompletionRequest, cfg: ServeConfig, engine: ServingModel) -> tuple[Job, str, str | None]:
    """Validate everything that can be validated before the model runs. Returns (job, tool_choice mode, name)."""
    if req.model != cfg.model_name:
        raise ApiError(404, f"model {req.model!r} does not exist; this server serves {cfg.model_name!r}",
                       param="model", code="model_not_found")
    if req.stream_options is not None and not req.stream:
        raise ApiError(400, "stream_options is only allowed when stream is true", param="stream_options",
                       code="invalid_value")
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
              prompt_tokens, prompt_ids, constraint=call_constraint(req, mode, tools, max_new, engine),
              seed=req.seed or 0, top_p=req.top_p or 1.0)
    return job, mode, name


def call_constraint(req: ChatCompletionRequest, mode: str, tools: list[dict[str, Any]], max_new: int,
                    engine: ServingModel) -> Any:
    """The decoding constraint a request asks for (toolace_r.constrain), checked before the model runs: tool_choice
    "required" / a named function (`tools` already holds only that one) demand a call; `guided` with "auto" keeps a
    started call valid. `parallel_tool_calls: false` allows one call. None: plain decoding."""
    if mode in ("required", "named"):
        allow_text = False
    elif mode == "auto" and req.guided and tools:
        allow_text = True
    else:
        return None
    from toolace_r.constrain import CallConstraint

    constraint = CallConstraint(tools, allow_text=allow_text, max_calls=1 if req.parallel_tool_calls is False else None)
    try:
        shortest = engine.shortest_answer_tokens(constraint)
    except ValueError as err:
        raise ApiError(400, f"constrained decoding of calls is not possible for these tools: {err}", param="tools",
                       code="invalid_value") from None
    if shortest > max_new:
        raise ApiError(400, f"max_tokens={max_new} is too small for a tool call: the shortest call these tools allow "
                            f"takes {shortest} tokens", param="max_tokens", code="invalid_value")
    return constraint


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

