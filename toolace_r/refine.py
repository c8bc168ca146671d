"""Adaptive self-refinement at inference (PAPER.md §3): answer, then let the model check its own answer until two
rounds agree.

Round 1 answers the request. Round r > 1 shows the model its previous answer with the fixed instruction
(`prompts.refine_messages`) and asks again. An item stops when its parsed calls equal the previous round's
(`calls.calls_equal`: order-insensitive; two no-call answers are equal; an unparseable answer never counts as stable),
when a model trained with `refine.keep_answer: confirm` answers the confirmation phrase instead of repeating its call
(the previous answer then stands), or at `max_rounds`.

This module is the policy only: what round r + 1 asks and when to stop. The decoding is toolace_r.engine's: each item
is one engine request whose `next_round` is `Refinement.next_round`, so an item's later rounds reuse the cache of its
earlier ones (prefix reuse), verify the previous answer as a draft (greedy, keep_answer repeat), and share forward
passes with other items' first rounds — in evaluation and in a server alike.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from toolace_r.data import prompts
from toolace_r.engine import Engine, Request, Round, RoundStats, Sampling

log = logging.getLogger(__name__)

__all__ = ["RefineItem", "RefineResult", "RoundStats", "Refinement", "adaptive_refine"]


@dataclass
class RefineItem:
    tools: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    # the round-1 prompt's token ids when the caller already has them (the server tokenises each request to check it
    # against the context limit); None: rendered and tokenised here
    prompt_ids: list[int] | None = None
    # toolace_r.constrain.CallConstraint: every round's answer is decoded under it (a valid call, or with
    # allow_text a call or no-call text); None: plain decoding
    constraint: Any = None


@dataclass
class RefineResult:
    answer: str  # the last round's answer text
    calls: list[dict[str, Any]] | None  # its parsed calls; None when it does not parse
    rounds: int  # rounds used (1 = the first answer only)
    tokens: int  # tokens generated over all rounds (EOS included: each costs a decoding step)
    first_answer: str  # round 1's answer: the single-pass answer
    forward_passes: int  # forward passes this item took part in (a verified draft costs one)
    answers: list[str] = field(default_factory=list)  # every round's answer, in order


@dataclass
class Settings:
    """How items are refined (the same for every item of a call)."""
    style: str = "toolace"
    max_rounds: int = 3
    adaptive: bool = True  # False: always max_rounds rounds (the fixed-rounds baseline)
    keep_answer: str = "repeat"

    def __post_init__(self) -> None:
        if self.keep_answer not in prompts.REFINE_INSTRUCTIONS:
            raise ValueError(f"keep_answer must be one of {sorted(prompts.REFINE_INSTRUCTIONS)}, "
                             f"got {self.keep_answer!r}")
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {self.max_rounds}")


class Refinement:
    """One item's refinement: builds its engine request and decides each follow-up round.

    `on_result(result)` is called the moment the item's last round is decided (a streaming server answers then,
    before the rest of the batch finishes)."""

    def __init__(self, engine: Engine, item: RefineItem, settings: Settings, sampling: Sampling,
                 on_result: Callable[[RefineResult], None] | None = None):
        self.engine, self.item, self.settings = engine, item, settings
        self.on_result = on_result
        self.answers: list[str] = []
        self.calls: list[dict[str, Any]] | None = None
        self.tokens = 0
        tokenizer = engine.tokenizer
        prompt = item.prompt_ids if item.prompt_ids is not None else _encode(
            tokenizer, prompts.render_prompt(tokenizer, item.tools, item.messages, settings.style))
        self.request = Request(prompt=list(prompt), sampling=sampling, guide=self._guide(confirm=False),
                               next_round=self.next_round)

    def next_round(self, j: int, rnd: int, ids: list[int], stopped: bool = False) -> Round | None:
        s = self.settings
        text = _decode(self.engine, ids)
        if rnd > 1 and s.keep_answer == "confirm" and text == prompts.CONFIRM_ANSWER:
            text, parsed, stable = self.answers[-1], self.calls, True  # confirmed: the previous answer stands
        else:
            parsed = _parse(text)
            stable = rnd > 1 and _stable(parsed, self.calls)
        self.answers.append(text)
        self.calls = parsed
        self.tokens += len(ids)
        if rnd < s.max_rounds and not (s.adaptive and stable) and not stopped:
            tokenizer = self.engine.tokenizer
            prompt = _encode(tokenizer, prompts.render_prompt(tokenizer, self.item.tools, self.item.messages, s.style,
                                                              previous_answer=text, keep_answer=s.keep_answer))
            return Round(prompt, draft=list(ids) if s.keep_answer == "repeat" else None,
                         guide=self._guide(confirm=s.keep_answer == "confirm"))
        if self.on_result is not None:
            self.on_result(self.result())
        return None

    def result(self) -> RefineResult:
        return RefineResult(answer=self.answers[-1], calls=self.calls, rounds=len(self.answers), tokens=self.tokens,
                            first_answer=self.answers[0], forward_passes=self.request.passes[0],
                            answers=list(self.answers))

    def _guide(self, confirm: bool) -> Any:
        if self.item.constraint is None:
            return None
        from toolace_r import constrain

        vocab = constrain.vocab_for(self.engine.model, self.engine.tokenizer, self.engine.eos)
        return constrain.guide(self.item.constraint, vocab, allow_confirm=confirm)


def adaptive_refine(
    model: Any,
    tokenizer: Any,
    items: list[RefineItem],
    max_rounds: int = 3,
    max_new_tokens: int = 128,
    style: str = "toolace",
    draft_verify: bool = True,
    reuse_prefix: bool = True,
    temperature: float = 0.0,
    *,
    top_p: float = 1.0,
    adaptive: bool = True,
    seed: int = 0,
    stats: dict[int, RoundStats] | None = None,
    on_tokens: Callable[[int, int, list[int]], bool] | None = None,
    on_result: Callable[[int, RefineResult], None] | None = None,
    keep_answer: str = "repeat",
    engine: Engine | None = None,
    max_rows: int = 0,
    kv_cache_tokens: int = 0,
) -> list[RefineResult]:
    """Answer every item, then refine each until two consecutive rounds agree or `max_rounds` (see module doc).

    Decodes on `engine` when given (its own draft/reuse settings apply), else on a new one with these settings.
    Item i samples from seed + i (temperature > 0). `stats`, when given, gets each round number's cost added.
    `on_tokens(item, round, new_ids)` after every pass with the tokens the item gained (True stops the item);
    `on_result(item, result)` the moment an item's last round is decided.
    """
    settings = Settings(style=style, max_rounds=max_rounds, adaptive=adaptive, keep_answer=keep_answer)
    if engine is None:
        engine = Engine(model, tokenizer, kv_cache_tokens=kv_cache_tokens, max_rows=max_rows,
                        draft_verify=draft_verify and keep_answer == "repeat", reuse_prefix=reuse_prefix)
    before = {r: RoundStats(**vars(s)) for r, s in engine.stats.items()}
    refinements: list[Refinement] = []
    for i, item in enumerate(items):
        done = (lambda res, i=i: on_result(i, res)) if on_result is not None else None
        ref = Refinement(engine, item, settings, Sampling(temperature, top_p, seed + i, max_new_tokens), done)
        if on_tokens is not None:
            ref.request.on_tokens = lambda j, rnd, ids, i=i: on_tokens(i, rnd, ids)
        refinements.append(ref)
    engine.run([r.request for r in refinements])
    if stats is not None:
        for rnd, now in engine.stats.items():
            was = before.get(rnd, RoundStats())
            into = stats.setdefault(rnd, RoundStats())
            for name, value in vars(now).items():
                setattr(into, name, getattr(into, name) + value - getattr(was, name))
    return [r.result() for r in refinements]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _decode(engine: Engine, ids: list[int]) -> str:
    if ids and ids[-1] in engine.eos:
        ids = ids[:-1]
    return engine.tokenizer.decode(ids, skip_special_tokens=True).strip()


def _parse(text: str) -> list[dict[str, Any]] | None:
    from toolace_r.calls import parse_calls
    from toolace_r.errors import CallParseError

    try:
        return parse_calls(text)
    except CallParseError:
        return None


def _stable(calls: list | None, previous: list | None) -> bool:
    from toolace_r.calls import calls_equal

    return calls is not None and previous is not None and calls_equal(calls, previous)
