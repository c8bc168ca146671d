"""The OpenAI wire format this server speaks: the request schema (the part of it a tool-calling model can honour),
the response schema, and the error contract.

The error contract: every failure is an OpenAI error object `{"error": {"message", "type", "param", "code"}}`; a bad
request is a 4xx whose `param` names the request field at fault (`messages[0].content`, `tool_choice`, ...) and whose
message says what is wrong with it. Only the model failing on a valid request is a 5xx.

The response models are documentation for /openapi.json (clients and the fuzz test check bodies against them); the
handler builds the response dicts itself (toolace_r.serve.convert.completion_response).
"""

from typing import Annotated, Any, Literal, Union

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_REFINE_ROUNDS_LIMIT = 16  # a request may ask for fewer or more rounds than the default, never more than this


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


class StreamOptions(_Model):
    include_usage: bool | None = None  # a last chunk with `usage` and empty `choices`, before `data: [DONE]`


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
    stream_options: StreamOptions | None = None
    seed: int | None = None
    # extension: cap on adaptive refinement rounds for this request (1 = one pass, no refinement)
    max_refine_rounds: int | None = Field(default=None, ge=1, le=MAX_REFINE_ROUNDS_LIMIT)
    # extension: guided decoding for tool_choice "auto" (toolace_r.constrain)
    guided: bool | None = Field(default=None, description=(
        "toolace-r extension (openai client: extra_body={\"guided\": true}). With tool_choice \"auto\" (or none "
        "given): if the model starts a call, it is decoded under the tools' schemas, so it stays a valid call "
        "(function names, required arguments, types, enum values); an answer without a call is still allowed. "
        "tool_choice \"required\" and a named function always decode this way, with a call demanded. Ignored "
        "with tool_choice \"none\" or without tools."))


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

