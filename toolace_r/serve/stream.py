"""Streaming responses (`stream: true`): the OpenAI chat-completions streaming contract over server-sent events.

What a client receives, in order (each a `data: {json}` event of a `chat.completion.chunk`, then `data: [DONE]`):
the role chunk (`delta: {"role": "assistant", "content": ""}`); content deltas, or per tool call a delta with its
`index`, `id`, `type` and function `name` (arguments "") followed by argument fragments; a chunk with an empty delta
and the `finish_reason` (`tool_calls`, `stop` or `length`); with `stream_options.include_usage`, a last chunk with
`usage` and empty `choices` (every earlier chunk then carries `"usage": null`). That is the contract of OpenAI's API
and of vLLM's server (its serving_chat.py chunks tool calls the same way: name first, then argument text), so
`openai`, LangChain's `AIMessageChunk` addition and litellm assemble the same message as the non-streamed response.

When the text arrives (see `StreamSession`): the answer streamed is always the final one. Tokens are streamed as
they are decoded only in the request's last possible refinement round (`max_refine_rounds: 1`: the first and only
one), because any earlier round's answer may still be replaced. Otherwise the stream starts the moment the job's last
round is decided (the engine reports it before the rest of its batch finishes) and the answer is sent at once.

While tokens stream, text that could begin a call (`[`, `{`, `<`, `(` or a backtick: the openings
toolace_r.calls.parse_calls reads calls from) is held back until the answer is complete, so a call is never sent as
content; prose before such a character is sent as it comes. A model that writes prose and then a call therefore
streams that prose as content before the call, where the non-streamed response (content None) drops it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from toolace_r.serve.model import Job, Outcome
from toolace_r.serve.schema import ApiError

log = logging.getLogger(__name__)

CALL_OPENINGS = "[{<(`"  # where a call attempt can start (see the module doc)
ARGUMENT_FRAGMENT_CHARS = 8  # tool-call arguments are sent in pieces of this many characters, as a decoder would
DONE = "data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies must not buffer the events


class TextStream:
    """Incremental detokenisation of one answer: after each batch of new token ids, the text a client may already
    see. The sent text is always a prefix of the final answer (`tokenizer.decode(ids).strip()`, as the engine
    decodes it): leading whitespace is dropped, trailing whitespace and an incomplete UTF-8 character (U+FFFD) are
    held back until more text follows, and with `calls_possible` everything from the first call opening on."""

    def __init__(self, tokenizer: Any, eos: set[int], calls_possible: bool):
        self.tokenizer, self.eos, self.calls_possible = tokenizer, eos, calls_possible
        self.ids: list[int] = []
        self.sent = ""
        self.ended = False

    def reset(self) -> None:
        self.ids, self.ended = [], False

    def add(self, ids: list[int]) -> str:
        """Take new token ids; return the text to send now ("" when nothing new is safe to show)."""
        for tok in ids:
            if self.ended or tok in self.eos:
                self.ended = True
                break
            self.ids.append(tok)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        if self.calls_possible:
            cut = min((i for i in (text.find(c) for c in CALL_OPENINGS) if i >= 0), default=len(text))
            text = text[:cut]
        text = text.rstrip()
        while text.endswith("\ufffd"):
            text = text[:-1].rstrip()
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


class ChunkWriter:
    """Serialises the chunks of one streamed completion (one id, one `created`)."""

    def __init__(self, model_name: str, include_usage: bool):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model_name = model_name
        self.include_usage = include_usage

    def _event(self, body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"

    def chunk(self, delta: dict[str, Any], finish: str | None = None, choice_extra: dict[str, Any] | None = None,
              **extra: Any) -> str:
        """One chunk; `choice_extra` adds fields to its choice, `extra` to the chunk (this server's extensions)."""
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish,
                                  **(choice_extra or {})}
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model_name, "choices": [choice], **extra}
        if self.include_usage:
            body["usage"] = None
        return self._event(body)

    def usage(self, usage: dict[str, int]) -> str:
        return self._event({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                            "model": self.model_name, "choices": [], "usage": usage})

    def role(self) -> str:
        return self.chunk({"role": "assistant", "content": ""})

    def error(self, err: ApiError) -> str:
        """An error after the stream started (the status line is sent): the event the openai SDK raises APIError on."""
        return self._event({"error": {"message": err.message, "type": err.type, "param": err.param,
                                      "code": err.code}})


def final_chunks(writer: ChunkWriter, response: dict[str, Any], sent: str) -> list[str]:
    """The rest of the stream once the answer is final: `response` is the non-streamed response
    (convert.completion_response), `sent` the content already streamed. Returns content remainder, tool-call
    deltas, the finish chunk, the usage chunk (when asked for) and [DONE]."""
    choice = response["choices"][0]
    message = choice["message"]
    out: list[str] = []
    content = message.get("content")
    if content:
        if not content.startswith(sent):  # cannot happen with a prefix-stable decode; say so if it ever does
            log.warning("streamed text %r is not a prefix of the final answer %r", sent, content)
        common = len(sent) if content.startswith(sent) else next(
            (i for i, (a, b) in enumerate(zip(content, sent)) if a != b), min(len(content), len(sent)))
        if content[common:]:
            out.append(writer.chunk({"content": content[common:]}))
    for index, call in enumerate(message.get("tool_calls") or []):
        fn = call["function"]
        out.append(writer.chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                                 "function": {"name": fn["name"], "arguments": ""}}]}))
        args = fn["arguments"]
        for start in range(0, len(args), ARGUMENT_FRAGMENT_CHARS):
            fragment = args[start:start + ARGUMENT_FRAGMENT_CHARS]
            out.append(writer.chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}))
    out.append(writer.chunk({}, choice["finish_reason"], toolace_r=response["toolace_r"],
                            choice_extra={"refinement": choice["refinement"]}))
    if writer.include_usage:
        out.append(writer.usage(response["usage"]))
    out.append(DONE)
    return out


class StreamSession:
    """One streaming request between the event loop and the model thread.

    The engine calls the job's hooks from its thread; they post events to this session's asyncio queue:
    ("tokens", round, ids) for the tokens of the job's last possible round (live text) and round 0 (decoding starts
    over), ("final", outcome) when its last round is decided, ("done", task) when the request's generate task ends
    (outcome or error). `gone` is set when the client disconnects; the engine then stops decoding this job at its
    next forward pass (the hook returns True), and the task is cancelled, which drops a job still queued."""

    def __init__(self, job: Job, mode: str, tokenizer: Any, eos: set[int]):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple] = asyncio.Queue()
        self.gone = threading.Event()
        self.job = job
        # live tokens: only where the text cannot be refused afterwards (required/named may end in a 422)
        self.live = mode in ("auto", "none")
        self.text = TextStream(tokenizer, eos, calls_possible=mode == "auto")
        self.task: asyncio.Task | None = None
        job.on_tokens, job.on_final = self._on_tokens, self._on_final

    # --- called from the model thread ---------------------------------------------------------------------------
    def _post(self, event: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: the replica is shutting down
            self.gone.set()

    def _on_tokens(self, rnd: int, ids: list[int]) -> bool:
        if self.gone.is_set():
            return True
        if rnd == 0 or (self.live and rnd == self.job.max_rounds):
            self._post(("tokens", rnd, ids))
        return False

    def _on_final(self, outcome: Outcome) -> None:
        self._post(("final", outcome))

    # --- on the event loop --------------------------------------------------------------------------------------
    def start(self, generate: Callable[[Job], Any]) -> None:
        self.task = asyncio.ensure_future(generate(self.job))
        self.task.add_done_callback(lambda task: self.queue.put_nowait(("done", task)))

    def close(self) -> None:
        """The client is gone or the stream ended: stop decoding for it and drop it from the queue."""
        self.gone.set()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def first(self) -> tuple:
        """Wait for the event that starts the HTTP stream: live tokens, or the final answer (or its error)."""
        while True:
            event = await self.queue.get()
            if event[0] == "tokens" and event[1] == 0:
                self.text.reset()
                continue
            return event

    @staticmethod
    def outcome(event: tuple) -> Outcome:
        """The final answer an event carries; the request's ApiError (a 500) when the model failed."""
        if event[0] == "final":
            return event[1]
        task = event[1]
        if task.cancelled():
            raise ApiError(500, "the request was cancelled before the model answered", "server_error")
        try:
            return task.result()  # raises the ApiError of a failed request
        except ApiError:
            raise
        except Exception as err:  # noqa: BLE001 - e.g. the batch queue stopped: still an error object for the client
            raise ApiError(500, f"the model failed on this request: {type(err).__name__}: {err}",
                           "server_error") from None

    async def events(self, first: tuple, writer: ChunkWriter,
                     respond: Callable[[Outcome], dict[str, Any]]) -> AsyncIterator[str]:
        """The SSE body: the role chunk, live text while it comes, then the final chunks. `first` is a live
        ("tokens", ...) event, or ("response", the finished non-streamed response); `respond` builds that response
        for an outcome (convert.completion_response)."""
        try:
            yield writer.role()
            event = first
            while True:
                if event[0] == "tokens":
                    if event[1] == 0:  # decoding starts over: only possible to hide while nothing was shown
                        if self.text.sent:
                            yield writer.error(ApiError(500, "the model failed after streaming began",
                                                        "server_error"))
                            return
                        self.text.reset()
                    else:
                        delta = self.text.add(event[2])
                        if delta:
                            yield writer.chunk({"content": delta})
                else:
                    try:
                        response = event[1] if event[0] == "response" else respond(self.outcome(event))
                    except ApiError as err:
                        yield writer.error(err)
                        return
                    for chunk in final_chunks(writer, response, self.text.sent):
                        yield chunk
                    return
                event = await self.queue.get()
        finally:
            self.close()
