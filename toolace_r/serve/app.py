"""The Ray Serve application: the FastAPI routes (auth → body → schema → convert → batch queue → engine), the replica
deployment, and building the application from the typed config (`toolace-r serve`) or from a Serve config file's
`args` (`serve run jobs/serve.yaml`, whose `import_path` is `toolace_r.serve:build_app`)."""

import asyncio
import hashlib
import hmac
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from toolace_r.config import Config, ServeConfig, load_config
from toolace_r.errors import ConfigError
from toolace_r.serve.body import read_json_body
from toolace_r.serve.convert import build_job, completion_response
from toolace_r.serve.model import Job, Outcome, ServingModel
from toolace_r.serve.stream import SSE_HEADERS, ChunkWriter, StreamSession
from toolace_r.serve.schema import (
    ApiError,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ErrorResponse,
    error_response,
    validation_error,
)

log = logging.getLogger(__name__)


def check_auth(request: Request, key_sha256: str | None) -> None:
    if not key_sha256:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    given = hashlib.sha256(token.strip().encode()).hexdigest() if scheme.lower() == "bearer" else ""
    if not hmac.compare_digest(given, key_sha256):
        raise ApiError(401, "missing or invalid API key: send `Authorization: Bearer <key>`",
                       type_="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})




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
    # stream: true answers with server-sent events of chat.completion.chunk objects (toolace_r.serve.stream); the
    # schema describes one event, as OpenAPI 3.2 and schemathesis read an event stream
    200: {"model": ChatCompletionResponse, "content": {"text/event-stream": {"schema": {
        "type": "object", "required": ["data"],
        "properties": {"event": {"type": "string"}, "data": {
            "type": "string", "description": "a chat.completion.chunk as JSON, an {\"error\": ...} object, or [DONE]"}}}}}},
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
    """One replica: the model and its engine (continuous batching, toolace_r.serve.model), and the OpenAI routes."""

    def __init__(self, settings: dict[str, Any], api_key_sha256: str | None = None):
        self.cfg = ServeConfig(**settings["serve"])
        self.key_sha256 = api_key_sha256
        # serve.batching=false: one request decodes at a time (the unbatched baseline of benchmarks/serve_load.py)
        self.model = ServingModel.load(self.cfg.model, dtype=settings.get("dtype", "auto"),
                                        style=settings.get("prompt_style", ""),
                                        trust_remote_code=settings.get("trust_remote_code", False),
                                        draft_verify=settings.get("draft_verify", True),
                                        reuse_prefix=settings.get("reuse_prefix", True),
                                        keep_answer=settings.get("keep_answer", "repeat"),
                                        max_rows=self.cfg.max_batch_size if self.cfg.batching else 1,
                                        kv_cache_gb=settings.get("kv_cache_gb", 0.0))
        log.info("replica ready: model %s (style %s), batching=%s max_batch_size=%d", self.cfg.model,
                 self.model.style, self.cfg.batching, self.cfg.max_batch_size)

    async def generate(self, job: Job) -> Outcome:
        try:
            return await asyncio.wrap_future(self.model.submit(job))
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - this request's failure inside the model: its own 500
            raise ApiError(500, f"the model failed on this request: {type(err).__name__}: {err}",
                           "server_error") from None

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.cfg.model_name, "jobs": self.model.jobs, "steps": self.model.steps,
                "running": self.model.engine.running, "waiting": self.model.engine.waiting}

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
        job, mode, name = build_job(req, self.cfg, self.model)
        if req.stream:
            return await self.stream(req, job, mode, name)
        out = await self.generate(job)
        return JSONResponse(completion_response(out, job, mode, name, self.cfg.model_name, req.parallel_tool_calls))

    async def stream(self, req: ChatCompletionRequest, job: Job, mode: str, name: str | None) -> StreamingResponse:
        """`stream: true` (toolace_r.serve.stream). The HTTP stream starts with the first live token or, when none
        are streamed, with the final answer; everything that fails before that is an ordinary JSON error (a 422 for
        an unsatisfied tool_choice included). A client that disconnects stops its decoding and leaves the queue."""
        session = StreamSession(job, mode, self.model.tokenizer, self.model.engine.eos)

        def respond(out: Outcome) -> dict[str, Any]:
            return completion_response(out, job, mode, name, self.cfg.model_name, req.parallel_tool_calls)

        session.start(self.generate)
        try:
            first = await session.first()
            if first[0] != "tokens":  # the answer is complete: a failure or a refused tool_choice is still JSON
                first = ("response", respond(session.outcome(first)))
        except BaseException:
            session.close()
            raise
        writer = ChunkWriter(self.cfg.model_name, bool(req.stream_options and req.stream_options.include_usage))
        return StreamingResponse(session.events(first, writer, respond), media_type="text/event-stream",
                                 headers=SSE_HEADERS)

    def check_health(self) -> None:
        """Serve's replica health check: a dead model thread makes the replica unhealthy (Serve replaces it)."""
        if not self.model.alive:
            raise RuntimeError("the model thread is not running")


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
        log.warning("serve.max_ongoing_requests=%d < serve.max_batch_size=%d: a replica never decodes more than %d "
                    "requests at once", cfg.max_ongoing_requests, cfg.max_batch_size, cfg.max_ongoing_requests)
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
        "keep_answer": cfg.refine.keep_answer,
        "kv_cache_gb": cfg.engine.kv_cache_gb,
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

