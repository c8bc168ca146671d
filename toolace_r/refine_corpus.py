"""The self-refinement training corpus (PAPER.md §2): teach the model to check its own answer and stop when it is right.

For each selected sample the corpus holds
- one direct row: the dialogue → the gold answer;
- refinement rows built from the model's own answers sampled while probing (no extra generation needed): the dialogue,
  one previous answer and the fixed instruction (`prompts.refine_messages`) →
  the gold answer when that previous answer was judged wrong (`refine_wrong`),
  the previous answer itself when it was judged right (`refine_right`), so the model also learns when to stop —
  as the canonical rendering of the calls the judge read from it (`keep_target`, with the decoder the probe judged
  with), so a "keep" never teaches a form the judge would reject or merely tolerates — or, with
  `keep_answer: confirm`, the fixed confirmation phrase (`prompts.CONFIRM_ANSWER`) instead of the call written again.

How many of each come from config (`RefineConfig`): `wrong_per_sample`, `right_per_sample` per sample id (distinct
previous answers only: a k-sample probe often repeats itself), and `corpus_fraction`, the largest share refinement rows
may take of the whole training set (trimmed at random, keeping the wrong:right proportion). Every random choice is
seeded by `cfg.seed` and the sample id, so the corpus does not depend on the order of its inputs.
"""
from __future__ import annotations

import json
import logging
import random
from typing import Any, Iterable, Mapping

from toolace_r.calls import parse_calls, prepare_functions
from toolace_r.config import RefineConfig
from toolace_r.data import prompts
from toolace_r.data.schema import Sample
from toolace_r.errors import CallParseError, DataError

log = logging.getLogger(__name__)

KINDS = ("direct", "refine_wrong", "refine_right")


def direct_row(sample: Sample, style: str) -> dict[str, Any]:
    return {
        "id": sample.id,
        "kind": "direct",
        "chat": prompts.chat_messages(sample.tools, sample.messages, style),
        "completion": prompts.render_answer(sample.gold_calls()),
    }


def keep_target(previous: str, decoder: str, tools: list[dict[str, Any]] | None = None) -> str:
    """The "keep" completion for a previous answer judged right: its calls as `decoder` (the judge's) reads them,
    rendered canonically (`prompts.render_answer`, as the gold targets are), each call's arguments in its schema's
    parameter order when `tools` has the schema (the checker ignores keyword order). An answer the decoder reads no
    call from, or cannot read at all (judged right, so a no-call answer: BFCL counts a decode failure as no call),
    keeps as NO_CALL_ANSWER."""
    try:
        calls = parse_calls(previous, decoder)
    except CallParseError:
        calls = []
    if tools:
        functions = prepare_functions(tools)
        for call in calls:
            fn = functions.find(call["name"])
            if fn is not None:
                order = {p: i for i, p in enumerate(fn.params)}
                args = call["arguments"]  # unknown keys last, as written (sorted() is stable)
                call["arguments"] = {k: args[k] for k in sorted(args, key=lambda k: order.get(k, len(order)))}
    return prompts.render_answer(calls)


def refine_row(sample: Sample, previous: str, right: bool, style: str, decoder: str = "bfcl",
               keep_answer: str = "repeat") -> dict[str, Any]:
    """One refinement row. A right previous answer's target is the answer again (`keep_answer` repeat, the paper's) or
    the confirmation phrase (confirm: `prompts.CONFIRM_ANSWER`); a wrong one's is the gold answer."""
    if not right:
        completion = prompts.render_answer(sample.gold_calls())
    elif keep_answer == "confirm":
        completion = prompts.CONFIRM_ANSWER
    else:
        completion = keep_target(previous, decoder, sample.tools)
    return {
        "id": sample.id,
        "kind": "refine_right" if right else "refine_wrong",
        "chat": prompts.refine_messages(sample.tools, sample.messages, previous, style, keep_answer),
        "completion": completion,
    }


def _verdict_valid(verdict: Any, sample_id: str, index: int) -> bool:
    """A probe verdict (JSON text of calls.Verdict, or its dict) → valid?"""
    if isinstance(verdict, (str, bytes)):
        try:
            verdict = json.loads(verdict)
        except json.JSONDecodeError as err:
            raise DataError(f"verdict {index} is not JSON: {err}", index=index, field=f"verdicts of id {sample_id}")
    if isinstance(verdict, Mapping) and "valid" in verdict:
        return bool(verdict["valid"])
    if hasattr(verdict, "valid"):
        return bool(verdict.valid)
    raise DataError(f"verdict {index} has no 'valid' field: {verdict!r}", field=f"verdicts of id {sample_id}")


def split_answers(row: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """A probe row → (distinct wrong answers, distinct right answers), in first-seen order. Empty answers are
    dropped: there is nothing to check in them, and round 1 of a trained model does not produce them."""
    sample_id = str(row.get("id"))
    answers, verdicts = list(row.get("answers") or []), list(row.get("verdicts") or [])
    if len(answers) != len(verdicts):
        raise DataError(f"probe row has {len(answers)} answers but {len(verdicts)} verdicts",
                        field=f"answers/verdicts of id {sample_id}")
    wrong: dict[str, None] = {}
    right: dict[str, None] = {}
    for i, (answer, verdict) in enumerate(zip(answers, verdicts)):
        text = str(answer).strip()
        if not text:
            continue
        (right if _verdict_valid(verdict, sample_id, i) else wrong).setdefault(text, None)
    return list(wrong), list(right)


def _rng(seed: int, *key: Any) -> random.Random:
    return random.Random("/".join(str(k) for k in (seed,) + key))


def _trim(rows: list[dict], limit: int, seed: int) -> list[dict]:
    """At most `limit` refinement rows, chosen at random, keeping the wrong:right proportion."""
    if len(rows) <= limit:
        return rows
    by_kind = {k: [r for r in rows if r["kind"] == k] for k in ("refine_wrong", "refine_right")}
    quota = {k: round(limit * len(v) / len(rows)) for k, v in by_kind.items()}
    quota["refine_right"] = limit - quota["refine_wrong"]
    keep_ids = set()
    for kind, group in by_kind.items():
        picked = _rng(seed, "trim", kind).sample(range(len(group)), min(quota[kind], len(group)))
        keep_ids.update(id(group[i]) for i in picked)
    return [r for r in rows if id(r) in keep_ids]  # original order


def build_corpus(
    samples_by_id: Mapping[str, Sample],
    probe_rows: Iterable[Mapping[str, Any]],
    selected_ids: Iterable[str],
    cfg: RefineConfig,
    style: str,
    decoder: str = "bfcl",
) -> list[dict[str, Any]]:
    """Direct rows for every selected id, then refinement rows from the probe answers (see module doc); `decoder`:
    the one the probe judged the answers with (probe.decoder), which reads the "keep" targets.
    Rows: {"id", "kind": direct|refine_wrong|refine_right, "chat": [{"role","content"}...], "completion": str}."""
    if cfg.wrong_per_sample < 0 or cfg.right_per_sample < 0:
        raise DataError("refine.wrong_per_sample and refine.right_per_sample must be >= 0")
    if not 0.0 <= cfg.corpus_fraction < 1.0:
        raise DataError(f"refine.corpus_fraction must be in [0, 1), got {cfg.corpus_fraction}")
    probes = {str(r["id"]): r for r in probe_rows}
    selected = list(dict.fromkeys(str(i) for i in selected_ids))
    missing = [i for i in selected if i not in samples_by_id]
    if missing:
        raise DataError(f"{len(missing)} selected ids are not in the pool, e.g. {missing[:3]}")

    direct = [direct_row(samples_by_id[i], style) for i in selected]
    if not cfg.corpus:
        return direct
    refine: list[dict[str, Any]] = []
    unprobed = 0
    for sample_id in selected:
        row = probes.get(sample_id)
        if row is None:
            unprobed += 1
            continue
        sample = samples_by_id[sample_id]
        wrong, right = split_answers(row)
        rng = _rng(cfg.seed, sample_id)
        for answer in rng.sample(wrong, min(cfg.wrong_per_sample, len(wrong))):
            refine.append(refine_row(sample, answer, right=False, style=style, keep_answer=cfg.keep_answer))
        for answer in rng.sample(right, min(cfg.right_per_sample, len(right))):
            refine.append(refine_row(sample, answer, right=True, style=style, decoder=decoder,
                                     keep_answer=cfg.keep_answer))
    if unprobed:
        log.info("refine corpus: %d selected ids have no probe answers (direct rows only)", unprobed)
    # refinement rows at most corpus_fraction of the total: r <= f * (d + r)  <=>  r <= f / (1 - f) * d
    limit = int(cfg.corpus_fraction / (1.0 - cfg.corpus_fraction) * len(direct) + 1e-9)
    trimmed = _trim(refine, limit, cfg.seed)
    if len(trimmed) < len(refine):
        log.info("refine corpus: %d refinement rows trimmed to %d (corpus_fraction %.2f)",
                 len(refine), len(trimmed), cfg.corpus_fraction)
    return direct + trimmed
