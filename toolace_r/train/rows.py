"""Training rows, tokenisation and the run's micro-batch schedule — pure functions: no Ray, no DeepSpeed.

A training row is `{"id", "kind", "chat": [{"role", "content"}], "completion"}` (refine_corpus writes them; a pool
file is turned into direct rows). A worker tokenises its shard with `encode_row` (loss on the answer only), groups
rows by length into token-budgeted micro-batches (`plan_micro_batches`) and lays out the whole run with
`build_schedule`.

Why it is built this way:
- Micro-batches are formed by length (sorted within windows, then shuffled), capped by a token budget, so padding
  stays a few percent of the tokens; the fraction is measured per step and reported.
- Every worker must take the same number of steps, or DeepSpeed's collectives hang: workers agree on the minimum
  micro-batch count per epoch (`agree_min`, an all-reduce in the worker) and drop the rest of that epoch's shuffled
  batch list.
- The schedule depends only on the rows, the config and the seed, so a restarted worker rebuilds the same one and
  resuming at "step s" means the same micro-batches as before the failure.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

from toolace_r.config import TrainConfig
from toolace_r.errors import DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt, padding)
GROUP_WINDOW = 2048  # rows sorted by length together; larger = less padding, less batch-composition randomness
ROW_KINDS = {"direct", "refine_wrong", "refine_right"}


def validate_rows(rows: Iterable[Any], source: str = "training data") -> list[dict]:
    """Check the training-row contract `{"id", "kind", "chat": [{"role","content"}], "completion"}` and return the
    rows. The error names the record and the field, so a bad corpus fails on the driver, not inside a worker."""
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"expected an object, got {type(row).__name__}", path=source, index=i)
        for key in ("id", "chat", "completion"):
            if key not in row:
                raise DataError("missing", path=source, index=i, field=key)
        chat = row["chat"]
        if isinstance(chat, str):  # rows that went through parquet/Arrow may carry the chat as JSON text
            try:
                chat = json.loads(chat)
            except json.JSONDecodeError as err:
                raise DataError(f"not valid JSON: {err}", path=source, index=i, field="chat") from None
        if not isinstance(chat, list) or not chat:
            raise DataError("must be a non-empty list of {role, content} messages", path=source, index=i, field="chat")
        for j, msg in enumerate(chat):
            if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content", ""), str):
                raise DataError(f"message {j} must be {{'role': str, 'content': str}}", path=source, index=i, field="chat")
        if not isinstance(row["completion"], str) or not row["completion"]:
            raise DataError("must be a non-empty string", path=source, index=i, field="completion")
        kind = row.get("kind", "direct")
        if kind not in ROW_KINDS:
            raise DataError(f"{kind!r} is not one of {sorted(ROW_KINDS)}", path=source, index=i, field="kind")
        out.append({"id": str(row["id"]), "kind": kind, "chat": chat, "completion": row["completion"]})
    if not out:
        raise DataError("no training rows", path=source)
    return out


def rows_from_samples(samples: list, style: str) -> list[dict]:
    """Pool samples → direct training rows (answer = the sample's gold calls), for `toolace-r train --data POOL`."""
    from toolace_r.data.prompts import chat_messages, render_answer

    return [
        {"id": s.id, "kind": "direct", "chat": chat_messages(s.tools, s.messages, style),
         "completion": render_answer(s.gold_calls())}
        for s in samples
    ]


def load_rows(data: str | Path | list[dict], style: str = "compact") -> list[dict]:
    """Training rows from a list, or a JSONL file of rows. A file of pool samples (no "completion" key) is read with
    the data module's reader and turned into direct rows, so a pool file can be trained on as it is."""
    if isinstance(data, list):
        return validate_rows(data)
    path = Path(data)
    if not path.exists():
        raise DataError("does not exist", path=str(path))
    rows: list | None = None
    if path.is_file() and path.suffix == ".json":
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            rows = loaded if isinstance(loaded, list) else None
        except json.JSONDecodeError as err:
            raise DataError(f"not valid JSON: {err}", path=str(path)) from None
    elif path.is_file() and path.suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise DataError(f"not valid JSON: {err}", path=str(path), index=i) from None
    if rows and isinstance(rows[0], dict) and "completion" in rows[0]:
        return validate_rows(rows, str(path))
    from toolace_r.data.pool import read_samples_file  # pool formats (owned by the data module)

    result = read_samples_file(str(path), require_declared=True)
    if result.skipped:
        log.warning("%s: skipped %d malformed records (first: %s)", path, result.skipped, result.errors[:1])
    return validate_rows(rows_from_samples(result.samples, style), str(path))


def encode_row(tokenizer: Any, chat: list[dict], completion: str, max_length: int) -> dict | None:
    """One row → input_ids and labels, loss on the answer only.

    prompt = the chat template with the generation prompt (exactly what inference sees), target = completion + EOS.
    Both are tokenised without added special tokens (the template already holds BOS). Too long: the prompt loses
    tokens from its start, the answer is kept whole; a row whose answer alone does not fit returns None.
    """
    from toolace_r.data.prompts import answer_suffix, prompt_text

    prompt_ids = tokenizer(prompt_text(tokenizer, chat), add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(completion + answer_suffix(tokenizer), add_special_tokens=False)["input_ids"]
    if len(target_ids) >= max_length:
        return None
    truncated = len(prompt_ids) + len(target_ids) > max_length
    if truncated:
        prompt_ids = prompt_ids[len(prompt_ids) + len(target_ids) - max_length:]
    return {
        "input_ids": prompt_ids + target_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids,
        "truncated": truncated,
    }


def plan_micro_batches(lengths: list[int], tokens_per_micro_batch: int, seed: int, window: int = GROUP_WINDOW) -> list[list[int]]:
    """Row indices grouped into micro-batches of similar length whose padded size (rows × longest) fits the token
    budget. Rows are shuffled, sorted by length inside windows of `window` rows, cut into batches, and the batch
    order shuffled again: low padding without always feeding the same lengths in the same order."""
    import random

    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        current: list[int] = []
        longest = 0
        for i in chunk:
            new_longest = max(longest, lengths[i])
            if current and new_longest * (len(current) + 1) > tokens_per_micro_batch:
                batches.append(current)
                current, new_longest = [], lengths[i]
            current.append(i)
            longest = new_longest
        if current:
            batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(examples: list[dict], pad_id: int) -> dict:
    """Right-padded tensors for a causal-LM forward with labels (HF shifts labels itself)."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[r, :n] = torch.tensor(e["input_ids"])
        labels[r, :n] = torch.tensor(e["labels"])
        mask[r, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def target_count(example: dict) -> int:
    """Target tokens of a tokenised row: the labels a prediction is scored against. A causal LM's loss shifts the
    labels (position i predicts label i+1), so the first label is never one; the rest count unless IGNORE_INDEX (what
    HF Trainer counts for `num_items_in_batch`). encode_row always keeps ≥ 1 prompt token, so this is every answer
    token."""
    return sum(1 for t in example["labels"][1:] if t != IGNORE_INDEX)


def batch_stats(examples: list[dict]) -> tuple[int, int, int]:
    """(real tokens, padding tokens, target tokens) of a micro-batch."""
    real = sum(len(e["input_ids"]) for e in examples)
    width = max(len(e["input_ids"]) for e in examples)
    return real, width * len(examples) - real, sum(target_count(e) for e in examples)


def build_schedule(n_rows: int, lengths: list[int], tcfg: TrainConfig, agree_min=lambda n: n,
                   world: int = 1) -> tuple[list[list[int]], int]:
    """The whole run's micro-batches (concatenated epochs) and its number of optimizer steps.

    `agree_min(n)` returns the minimum of n over all workers (an all-reduce in training, identity alone): every
    worker keeps the same number of micro-batches per epoch, a multiple of grad_accum. A fractional `epochs` runs
    the last epoch partly; `max_steps` caps the total.

    `max_tokens` > 0 replaces `epochs` by a token budget (equal-budget ablations): epochs are cycled, as many as
    needed, and the run stops after the first step at which the tokens processed (prompt + target, the
    `train_tokens` figure; this worker's count × `world`, the workers holding near-equal shards) reach the budget;
    every worker takes the largest of those step counts.
    """
    ga = max(1, tcfg.grad_accum)
    if tcfg.max_tokens > 0:
        return _token_budget_schedule(lengths, tcfg, agree_min, world)
    schedule: list[list[int]] = []
    full_epochs = math.ceil(tcfg.epochs) if tcfg.epochs > 0 else 1
    steps = 0
    for epoch in range(full_epochs):
        batches = plan_micro_batches(lengths, tcfg.tokens_per_micro_batch, seed=tcfg.seed * 1000 + epoch)
        n = agree_min(len(batches))
        epoch_steps = n // ga
        if epoch == full_epochs - 1 and tcfg.epochs != full_epochs:  # fractional last epoch
            epoch_steps = max(1, int(round(epoch_steps * (tcfg.epochs - epoch))))
        schedule.extend(batches[: epoch_steps * ga])
        steps += epoch_steps
    if tcfg.max_steps > 0:
        steps = min(steps, tcfg.max_steps)
        schedule = schedule[: steps * ga]
    return schedule, steps


def _token_budget_schedule(lengths: list[int], tcfg: TrainConfig, agree_min, world: int) -> tuple[list[list[int]], int]:
    """build_schedule for train.max_tokens > 0. Collectives (agree_min) are called the same number of times on every
    worker: each epoch once for its batch count and once for "does any worker still need tokens"."""
    ga = max(1, tcfg.grad_accum)
    share = tcfg.max_tokens / max(1, world)
    schedule: list[list[int]] = []
    step_tokens: list[int] = []  # this worker's real tokens per optimizer step
    epoch = 0
    while True:
        batches = plan_micro_batches(lengths, tcfg.tokens_per_micro_batch, seed=tcfg.seed * 1000 + epoch)
        n = (agree_min(len(batches)) // ga) * ga
        if n == 0:
            break
        for s in range(0, n, ga):
            group = batches[s:s + ga]
            schedule.extend(group)
            step_tokens.append(sum(lengths[i] for b in group for i in b))
        still_short = int(sum(step_tokens) < share)
        if -agree_min(-still_short) == 0:  # max over workers: stop when nobody is short of its share
            break
        epoch += 1
    total, own_steps = 0, len(step_tokens)
    for j, t in enumerate(step_tokens):
        total += t
        if total >= share:
            own_steps = j + 1
            break
    steps = -agree_min(-own_steps)  # the largest: every worker reaches its share
    if tcfg.max_steps > 0:
        steps = min(steps, tcfg.max_steps)
    return schedule[: steps * ga], steps

