"""The model side of a replica: `ServingModel` holds the model and one decoding engine (toolace_r.engine), stepped by
one model thread, and answers jobs with adaptive self-refinement (toolace_r.refine) as they arrive.

There is no batch to form: `submit(job)` hands the job to the engine, which admits it between two decoding steps
(continuous batching), so a request that arrives while others decode starts at the next step, a later refinement
round of one request and the first round of another share a forward pass, and a finished request leaves at once.

A `Job` is a validated request (toolace_r.serve.convert.build_job made it); an `Outcome` is the final answer with its
parsed calls, rounds and token counts (convert.completion_response turns it into the OpenAI response).
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from toolace_r.errors import CallParseError

log = logging.getLogger(__name__)


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
    # toolace_r.constrain.CallConstraint: tool_choice required/named, or guided auto (convert.build_job); None: free
    constraint: Any = field(default=None, repr=False, compare=False)
    seed: int = 0  # sampling (temperature > 0): the request's `seed` and `top_p`
    top_p: float = 1.0
    # streaming requests only (toolace_r.serve.stream), called from the model thread:
    # on_tokens(round, new_ids) → True when the client is gone (its decoding stops, its row frees);
    # on_final(outcome) as soon as the job's last round is decided
    on_tokens: Callable[[int, list[int]], bool] | None = field(default=None, repr=False, compare=False)
    on_final: Callable[["Outcome"], None] | None = field(default=None, repr=False, compare=False)


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


class ServingModel:
    """The model once, its engine, and the thread that steps it."""

    def __init__(self, model: Any, tokenizer: Any, style: str, draft_verify: bool = True, reuse_prefix: bool = True,
                 keep_answer: str = "repeat", max_rows: int = 0, kv_cache_gb: float = 0.0):
        from toolace_r.engine import Engine, default_kv_cache_tokens

        self.model, self.tokenizer, self.style, self.keep_answer = model, tokenizer, style, keep_answer
        self.context_limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.engine = Engine(model, tokenizer, max_rows=max_rows,
                             kv_cache_tokens=default_kv_cache_tokens(model, kv_cache_gb),
                             draft_verify=draft_verify and keep_answer == "repeat", reuse_prefix=reuse_prefix)
        self.jobs = 0  # jobs submitted; with `steps` and `rows` for /health
        self.steps = 0
        self._work = threading.Condition()
        self._inflight: dict[Any, concurrent.futures.Future] = {}
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="toolace-model", daemon=True)
        self._thread.start()

    @classmethod
    def load(cls, path: str, dtype: str = "auto", style: str = "", trust_remote_code: bool = False,
             draft_verify: bool = True, reuse_prefix: bool = True, keep_answer: str = "repeat", max_rows: int = 0,
             kv_cache_gb: float = 0.0) -> "ServingModel":
        from toolace_r.models import load_model, read_meta, resolve_model_path

        # a model dir in object storage (`serve --model s3://.../iter_NNN/model`): this node's copy, whose
        # toolace_r.json gives the prompt style it was trained with (read off the URI it would say nothing)
        path = resolve_model_path(path)
        model, tokenizer = load_model(path, dtype=dtype, trust_remote_code=trust_remote_code)
        meta = read_meta(path)
        served = cls(model, tokenizer, meta.get("prompt_style", style or "toolace"), draft_verify, reuse_prefix,
                     meta.get("keep_answer", keep_answer), max_rows, kv_cache_gb)
        served.prepare_constraints()
        return served

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._failed is None

    def prepare_constraints(self) -> None:
        """Build the grammar engine's view of the tokenizer now (~1 s for a 150k vocabulary), not on the first
        request with tool_choice required/named or guided. A tokenizer it cannot read is logged; such requests
        then get a 400 naming the problem."""
        from toolace_r import constrain

        try:
            constrain.vocab_for(self.model, self.tokenizer, self.engine.eos)
        except Exception as err:  # noqa: BLE001 - serving without constraints still works
            log.warning("constrained decoding (tool_choice required/named, guided) is unavailable: %s", err)

    def prompt(self, tools: list[dict[str, Any]], messages: list[dict[str, Any]]) -> str:
        from toolace_r.data.prompts import render_prompt

        return render_prompt(self.tokenizer, tools, messages, self.style)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def shortest_answer_tokens(self, constraint: Any) -> int:
        """Tokens of the shortest answer `constraint` allows with this tokenizer (toolace_r.constrain); compiles its
        grammar once (cached), so a schema the grammar engine refuses is found before the model runs (ValueError)."""
        from toolace_r import constrain

        try:
            vocab = constrain.vocab_for(self.model, self.tokenizer, self.engine.eos)
        except Exception as err:  # noqa: BLE001 - e.g. a slow (non-fast) tokenizer llguidance cannot read
            raise ValueError(f"this model's tokenizer cannot be constrained: {err}") from None
        return constrain.shortest_answer_tokens(constraint, vocab)

    # --- jobs -----------------------------------------------------------------------------------------------------
    def submit(self, job: Job) -> concurrent.futures.Future:
        """Hand a job to the engine (any thread); the future resolves to its Outcome, or to the exception that
        failed it (only that job: the engine's other requests go on). Cancelling the future cancels the job."""
        from toolace_r.engine import Sampling
        from toolace_r.refine import RefineItem, Refinement, Settings

        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            if self._failed is not None:
                raise RuntimeError(f"the model thread stopped: {self._failed}")
            settings = Settings(style=self.style, max_rounds=job.max_rounds, keep_answer=self.keep_answer)
            sampling = Sampling(temperature=job.temperature, top_p=job.top_p, seed=job.seed,
                                max_new_tokens=job.max_new_tokens)

            def on_result(res: Any) -> None:
                outcome = _outcome(res)
                if job.on_final is not None:
                    job.on_final(outcome)
                if not future.done():
                    future.set_result(outcome)

            refinement = Refinement(self.engine, RefineItem(job.tools, job.messages, job.prompt_ids, job.constraint),
                                    settings, sampling, on_result)
            request = refinement.request
            if job.on_tokens is not None:
                request.on_tokens = lambda j, rnd, ids: bool(job.on_tokens(rnd, ids))
            request.on_done = lambda req: self._done(req, future)
            future.add_done_callback(lambda f: self.engine.cancel(request) if f.cancelled() else None)
            with self._work:
                self.engine.submit(request)
                self._inflight[request] = future
                self.jobs += 1
                self._work.notify()
        except Exception as err:  # noqa: BLE001 - a job the model code refuses fails alone (→ its 500)
            future.set_exception(err)
        return future

    def run(self, jobs: list[Job]) -> list[Outcome | BaseException]:
        """Submit jobs together and wait for all: each one's Outcome or the exception that failed it."""
        futures = [self.submit(job) for job in jobs]
        return [f.exception() or f.result() for f in futures]

    def _done(self, request: Any, future: concurrent.futures.Future) -> None:
        self._inflight.pop(request, None)
        if future.done():
            return
        if request.error is not None:
            future.set_exception(request.error)
        elif request.cancelled or any(request.stopped):
            future.cancel()  # the client went away: nobody reads an answer

    def _loop(self) -> None:
        """Step the engine while it has work; sleep when it has none. A failure of a forward pass itself (not of one
        request's callbacks, which the engine isolates) fails the requests in flight, and the next ones start on a
        fresh cache."""
        while True:
            with self._work:
                while self.engine.idle:
                    self._work.wait()
            try:
                self.engine.step()
                self.steps += 1
            except Exception as err:  # noqa: BLE001 - e.g. out of memory: report to the callers, keep serving
                log.exception("a decoding step failed; failing the %d requests in flight", len(self._inflight))
                with self._work:
                    for future in list(self._inflight.values()):
                        if not future.done():
                            future.set_exception(err)
                    self._inflight.clear()
                    self.engine.reset()


def _outcome(res: Any) -> Outcome:
    """A RefineResult → the Outcome the OpenAI response is built from."""
    calls, error = (res.calls, None) if res.calls is not None else parse_answer(res.answer)
    return Outcome(res.answer, calls, res.rounds, res.tokens, error, res.forward_passes)
