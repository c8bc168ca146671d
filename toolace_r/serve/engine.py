"""The model side of a replica: one Engine holds the model and answers batches of jobs with adaptive
self-refinement (toolace_r.refine), called from a single worker thread.

A `Job` is a validated request (toolace_r.serve.convert.build_job made it); an `Outcome` is the final answer with its
parsed calls, rounds and token counts (convert.completion_response turns it into the OpenAI response).
"""
from __future__ import annotations

import logging
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
    # streaming requests only (toolace_r.serve.stream), called from the model thread:
    # on_tokens(round, new_ids) → True when the client is gone (its decoding stops, its slot frees); round 0 with no
    # ids: the job is retried alone after its batch failed, decoding starts over;
    # on_final(outcome) as soon as the job's last round is decided, before its batch neighbours finish
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


@dataclass
class Engine:
    """Holds the model once and answers batches of jobs with adaptive refinement."""
    model: Any
    tokenizer: Any
    style: str
    draft_verify: bool = True
    reuse_prefix: bool = True
    context_limit: int = 0
    keep_answer: str = "repeat"  # how the model keeps a right answer in a refinement round (its toolace_r.json)
    batches: int = field(default=0)

    @classmethod
    def load(cls, path: str, dtype: str = "auto", style: str = "", trust_remote_code: bool = False,
             draft_verify: bool = True, reuse_prefix: bool = True, keep_answer: str = "repeat") -> "Engine":
        from toolace_r.models import load_model, read_meta, resolve_model_path

        # a model dir in object storage (`serve --model s3://.../iter_NNN/model`): this node's copy, whose
        # toolace_r.json gives the prompt style it was trained with (read off the URI it would say nothing)
        path = resolve_model_path(path)
        model, tokenizer = load_model(path, dtype=dtype, trust_remote_code=trust_remote_code)
        meta = read_meta(path)
        style = meta.get("prompt_style", style or "toolace")
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        engine = cls(model, tokenizer, style, draft_verify, reuse_prefix, limit,
                     keep_answer=meta.get("keep_answer", keep_answer))
        engine.prepare_constraints()
        return engine

    def prepare_constraints(self) -> None:
        """Build the grammar engine's view of the tokenizer now (~1 s for a 150k vocabulary), not on the first
        request with tool_choice required/named or guided. A tokenizer it cannot read is logged; such requests
        then get a 400 naming the problem."""
        from toolace_r import constrain
        from toolace_r.refine import stop_ids

        try:
            constrain.vocab_for(self.model, self.tokenizer, stop_ids(self.model, self.tokenizer))
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
        from toolace_r.refine import stop_ids

        try:
            vocab = constrain.vocab_for(self.model, self.tokenizer, stop_ids(self.model, self.tokenizer))
        except Exception as err:  # noqa: BLE001 - e.g. a slow (non-fast) tokenizer llguidance cannot read
            raise ValueError(f"this model's tokenizer cannot be constrained: {err}") from None
        return constrain.shortest_answer_tokens(constraint, vocab)

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
            if job.on_tokens is not None:
                job.on_tokens(0, [])  # round 0: decoding starts over, forget the tokens streamed so far
            return self._answer([job], max_rounds, max_new_tokens, temperature)[0]
        except Exception as err:  # noqa: BLE001 - reported to that request as a 500
            log.exception("request failed inside the model")
            return err

    def _answer(self, jobs: list[Job], max_rounds: int, max_new_tokens: int, temperature: float) -> list[Outcome]:
        from toolace_r.refine import RefineItem, adaptive_refine

        items = [RefineItem(tools=j.tools, messages=j.messages, prompt_ids=j.prompt_ids, constraint=j.constraint)
                 for j in jobs]
        hooks: dict[str, Any] = {}
        if any(j.on_tokens for j in jobs):  # no hooks, no calls: batches without streaming requests run as before
            def on_tokens(i: int, rnd: int, ids: list[int]) -> bool:
                return bool(jobs[i].on_tokens and jobs[i].on_tokens(rnd, ids))
            hooks["on_tokens"] = on_tokens
        if any(j.on_final for j in jobs):
            def on_result(i: int, res: Any) -> None:
                if jobs[i].on_final:
                    jobs[i].on_final(_outcome(res))
            hooks["on_result"] = on_result
        results = adaptive_refine(self.model, self.tokenizer, items, max_rounds=max_rounds,
                                  max_new_tokens=max_new_tokens, style=self.style, draft_verify=self.draft_verify,
                                  reuse_prefix=self.reuse_prefix, temperature=temperature, batch_size=len(items),
                                  keep_answer=self.keep_answer, **hooks)
        return [_outcome(res) for res in results]


def _outcome(res: Any) -> Outcome:
    """A RefineResult → the Outcome the OpenAI response is built from."""
    calls, error = (res.calls, None) if res.calls is not None else parse_answer(res.answer)
    return Outcome(res.answer, calls, res.rounds, res.tokens, error, res.forward_passes)


