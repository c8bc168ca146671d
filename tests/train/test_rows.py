"""toolace_r.train.rows: label masking, truncation, length grouping, schedules and the row contract — no Ray."""
from __future__ import annotations

import json
import random

import pytest
import torch

from toolace_r.config import load_config
from toolace_r.data.prompts import chat_messages, prompt_text
from toolace_r.errors import DataError
from toolace_r.train import (
    IGNORE_INDEX,
    batch_stats,
    build_schedule,
    collate,
    encode_row,
    load_rows,
    plan_micro_batches,
    validate_rows,
)

from .common import TOOLS, fixed_rows


def test_prompt_tokens_carry_no_loss(tokenizer, tiny_model_dir):
    row = fixed_rows()[1]
    enc = encode_row(tokenizer, row["chat"], row["completion"], max_length=1024)
    prompt_ids = tokenizer(prompt_text(tokenizer, row["chat"]), add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert enc["input_ids"][:n] == prompt_ids
    assert enc["labels"][:n] == [IGNORE_INDEX] * n
    target = enc["labels"][n:]
    assert IGNORE_INDEX not in target and target == enc["input_ids"][n:]
    assert tokenizer.decode(target) == row["completion"] + tokenizer.eos_token

    # The model's loss with these labels is the cross-entropy over the answer tokens only (padding masked too).
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    short = encode_row(tokenizer, fixed_rows()[0]["chat"], fixed_rows()[0]["completion"], max_length=1024)
    batch = collate([enc, short], tokenizer.pad_token_id)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    with torch.no_grad():
        out = model(**batch)
        logits = out.logits[:, :-1]
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE_INDEX
        manual = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    assert keep.sum() == len(target) + sum(t != IGNORE_INDEX for t in short["labels"])
    assert torch.allclose(out.loss, manual, atol=1e-5)


def test_truncation_keeps_the_whole_answer(tokenizer):
    row = fixed_rows()[0]
    full = encode_row(tokenizer, row["chat"], row["completion"], max_length=4096)
    n_target = sum(t != IGNORE_INDEX for t in full["labels"])
    cut = encode_row(tokenizer, row["chat"], row["completion"], max_length=n_target + 5)
    assert cut["truncated"] and len(cut["input_ids"]) == n_target + 5
    assert cut["input_ids"][-n_target:] == full["input_ids"][-n_target:]  # answer intact
    assert cut["input_ids"][:5] == full["input_ids"][-n_target - 5:-n_target]  # prompt cut from its start
    assert encode_row(tokenizer, row["chat"], row["completion"], max_length=n_target) is None  # answer cannot fit


def test_length_grouping_keeps_padding_under_5_percent():
    rng = random.Random(0)
    lengths = [rng.randint(60, 400) for _ in range(3000)]
    batches = plan_micro_batches(lengths, tokens_per_micro_batch=4096, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every row exactly once
    assert all(len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 4096 for b in batches)
    real = sum(lengths)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert (padded - real) / padded <= 0.05
    # different epochs (seeds) give different batch orders; the same seed the same plan (deterministic resume)
    assert plan_micro_batches(lengths, 4096, seed=1) == batches
    assert plan_micro_batches(lengths, 4096, seed=2) != batches


def test_batch_stats_counts_padding_and_targets():
    a = {"input_ids": [1, 2, 3, 4], "labels": [IGNORE_INDEX, IGNORE_INDEX, 3, 4]}
    b = {"input_ids": [1, 2], "labels": [IGNORE_INDEX, 2]}
    assert batch_stats([a, b]) == (6, 2, 3)


def test_schedule_gives_every_worker_the_same_steps():
    cfg = load_config(None, ["train.epochs=2", "train.grad_accum=2", "train.tokens_per_micro_batch=300"])
    rng = random.Random(0)
    shards = [[rng.randint(20, 100) for _ in range(n)] for n in (37, 30)]  # uneven shards
    counts = [len(plan_micro_batches(s, 300, seed=0)) for s in shards]
    agree = lambda n: min(counts)  # noqa: E731 - stands in for the all-reduce MIN between the two workers
    results = [build_schedule(len(s), s, cfg.train, agree) for s in shards]
    (sched_a, steps_a), (sched_b, steps_b) = results
    assert steps_a == steps_b > 0
    assert len(sched_a) == len(sched_b) == steps_a * 2  # grad_accum micro-batches per step
    half = load_config(None, ["train.epochs=0.5", "train.tokens_per_micro_batch=300"]).train
    one = load_config(None, ["train.epochs=1", "train.tokens_per_micro_batch=300"]).train
    assert build_schedule(len(shards[0]), shards[0], half)[1] == round(build_schedule(len(shards[0]), shards[0], one)[1] / 2)
    capped = load_config(None, ["train.epochs=3", "train.max_steps=4", "train.tokens_per_micro_batch=300"]).train
    assert build_schedule(len(shards[0]), shards[0], capped)[1] == 4


def test_bad_rows_name_the_record_and_field():
    rows = fixed_rows()[:3]
    rows[2] = {**rows[2], "completion": ""}
    with pytest.raises(DataError, match=r"record 2.*'completion'"):
        validate_rows(rows)
    with pytest.raises(DataError, match=r"record 0.*'chat'"):
        validate_rows([{"id": "x", "completion": "y"}])
    with pytest.raises(DataError, match=r"'kind'"):
        validate_rows([{**fixed_rows()[0], "kind": "other"}])


def test_load_rows_reads_row_files_and_pool_files(tmp_path):
    from toolace_r.data.schema import Sample
    from toolace_r.io import write_samples
    from toolace_r.train import load_rows

    rows = fixed_rows()[:4]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_rows(str(tmp_path / "rows.jsonl")) == validate_rows(rows)
    sample = Sample(id="s1", tools=TOOLS[:1], messages=[{"role": "user", "content": "Weather in Oslo?"}],
                    truth=[{"get_weather": {"city": ["Oslo"]}}])
    write_samples(tmp_path / "pool.jsonl", [sample])
    (row,) = load_rows(str(tmp_path / "pool.jsonl"), style="compact")
    assert row["completion"] == '[get_weather(city="Oslo")]'
    assert row["chat"] == chat_messages(TOOLS[:1], sample.messages, "compact")
    (tmp_path / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl.*record 1"):
        load_rows(str(tmp_path / "bad.jsonl"))


def test_token_budget_schedule_stops_at_the_budget():
    """train.max_tokens (equal-budget ablations) replaces epochs: epochs are cycled until the tokens reach the budget."""
    rng = random.Random(3)
    lengths = [rng.randint(20, 100) for _ in range(40)]
    tcfg = load_config(None, ["train.max_tokens=7000", "train.tokens_per_micro_batch=300", "train.grad_accum=2"]).train
    schedule, steps = build_schedule(len(lengths), lengths, tcfg)
    assert len(schedule) == 2 * steps
    per_step = [sum(lengths[i] for b in schedule[s * 2:(s + 1) * 2] for i in b) for s in range(steps)]
    assert sum(per_step) >= 7000 > sum(per_step[:-1])  # stops at the first step that reaches the budget
    assert sum(per_step) > sum(lengths)  # more than one epoch was needed, and taken


