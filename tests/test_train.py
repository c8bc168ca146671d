"""toolace_r.train: label masking, length grouping, schedules and export without Ray; then real Ray Train + DeepSpeed
runs (2 CPU workers, the session's tiny model): ZeRO-2 and ZeRO-3 learn a small fixed set, the exported model beats
the untrained one at greedy decoding, and a worker that fails mid-run costs at most `checkpoint_every` steps.

Each trainer.fit costs ~15–40 s of Ray Train start-up on this machine, so the slow tests are two fits in all.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from toolace_r.config import load_config
from toolace_r.data.prompts import chat_messages, prompt_text, render_answer
from toolace_r.errors import DataError
from toolace_r.models import META_FILE, load_tokenizer
from toolace_r.train import (
    IGNORE_INDEX,
    batch_stats,
    build_schedule,
    collate,
    deepspeed_config,
    encode_row,
    lr_factor,
    plan_micro_batches,
    save_hf_model,
    train,
    validate_rows,
)

TOOLS = [
    {"name": "get_weather", "description": "Current weather in a city",
     "parameters": {"type": "dict", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    {"name": "convert_currency", "description": "Convert an amount of dollars",
     "parameters": {"type": "dict", "properties": {"amount": {"type": "integer"}, "to": {"type": "string"}},
                    "required": ["amount", "to"]}},
]
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Perth"]


def fixed_rows() -> list[dict]:
    """16 training rows in the contract's shape, made with prompts.chat_messages (compact style, short prompts)."""
    rows = []
    for i, city in enumerate(CITIES):
        rows.append({"id": f"weather-{i}", "kind": "direct",
                     "chat": chat_messages(TOOLS, [{"role": "user", "content": f"Weather in {city}?"}], "compact"),
                     "completion": render_answer([{"name": "get_weather", "arguments": {"city": city}}])})
        rows.append({"id": f"convert-{i}", "kind": "direct",
                     "chat": chat_messages(TOOLS, [{"role": "user", "content": f"Convert {10 * (i + 1)} dollars to EUR"}], "compact"),
                     "completion": render_answer([{"name": "convert_currency", "arguments": {"amount": 10 * (i + 1), "to": "EUR"}}])})
    return rows


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


# ------------------------------------------------------------------------------------------------ no Ray
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


def test_lr_warmup_then_cosine_to_min_ratio():
    factors = [lr_factor(s, warmup_steps=10, total_steps=110, min_lr_ratio=0.1) for s in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(factors[:10], factors[1:10]))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[110] == pytest.approx(0.1) and factors[60] == pytest.approx(0.55)


def test_deepspeed_config_follows_train_config():
    tcfg = load_config(None, ["train.zero_stage=3", "train.grad_accum=4", "train.grad_clip=0.5"]).train
    ds = deepspeed_config(tcfg, world_size=2, on_gpu=False)
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_batch_size"] == 8 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is False  # fp32 on CPU with precision=auto
    assert deepspeed_config(tcfg, 2, on_gpu=True)["bf16"]["enabled"] is True
    off = load_config(None, ["train.zero_stage=2", "train.offload_optimizer=true"]).train
    assert deepspeed_config(off, 2, on_gpu=True)["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


def test_amp_bf16_autocasts_the_forward_and_keeps_fp32_weights():
    import torch

    from toolace_r.train import autocast_context, use_bf16

    amp = load_config(None, ["train.precision=amp_bf16"]).train
    layer = torch.nn.Linear(8, 8)
    with autocast_context(amp, "cpu"):
        assert layer(torch.randn(2, 8)).dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float32 and not use_bf16(amp, on_gpu=True)
    with autocast_context(load_config(None, []).train, "cpu"):
        assert layer(torch.randn(2, 8)).dtype == torch.float32


def test_bad_rows_name_the_record_and_field():
    rows = fixed_rows()[:3]
    rows[2] = {**rows[2], "completion": ""}
    with pytest.raises(DataError, match=r"record 2.*'completion'"):
        validate_rows(rows)
    with pytest.raises(DataError, match=r"record 0.*'chat'"):
        validate_rows([{"id": "x", "completion": "y"}])
    with pytest.raises(DataError, match=r"'kind'"):
        validate_rows([{**fixed_rows()[0], "kind": "other"}])


def test_lora_export_is_merged_and_loads_without_peft(tiny_model_dir, tmp_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from toolace_r.train import _peft_config

    cfg = load_config(None, ["train.lora.enabled=true", "train.lora.r=4"])
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), _peft_config(cfg.train.lora))
    torch.manual_seed(0)
    with torch.no_grad():  # as if trained: LoRA B starts at zero, which would make the merge a no-op
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.eval()
    out = save_hf_model(peft_model.state_dict(), str(tiny_model_dir), tmp_path / "merged", lora=cfg.train.lora)
    assert not (out / "adapter_config.json").exists() and (out / META_FILE).exists()
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)
        assert not torch.allclose(base(input_ids=ids).logits, expected, atol=1e-3)


# ------------------------------------------------------------------------------------------------ Ray Train
def greedy_prefix_score(model_dir: str, rows: list[dict]) -> tuple[float, int]:
    """(mean fraction of each completion that the greedy answer gets right from its start, exact matches)."""
    from toolace_r.generation import Generator

    gen = Generator.from_path(model_dir)
    prompts = [prompt_text(gen.tokenizer, r["chat"]) for r in rows]
    answers = [g[0].text.strip() for g in gen.generate(prompts, temperature=0.0, max_new_tokens=32)]
    score, exact = 0.0, 0
    for answer, row in zip(answers, rows):
        want = row["completion"]
        n = 0
        while n < min(len(answer), len(want)) and answer[n] == want[n]:
            n += 1
        score += n / len(want)
        exact += answer == want
    return score / len(rows), exact


def _cfg(stage: int, **extra: str):
    overrides = {"train.zero_stage": str(stage), "train.num_workers": "2", "train.cpus_per_worker": "1",
                 "train.epochs": "40", "train.tokens_per_micro_batch": "1024", "train.lr": "5e-3",
                 "train.warmup_steps": "5", "train.checkpoint_every": "10", "train.max_failures": "1",
                 "model.prompt_style": "compact", **extra}
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])


def _check_learned(result: dict, out: Path, untrained: tuple[float, int], rows: list[dict]) -> None:
    assert result["steps"] == 80  # 16 rows, 2 workers, 1 length-grouped micro-batch each → 2 steps/epoch × 40
    assert result["loss_last"] < 0.35 * result["loss_first"], result
    assert result["padding_fraction"] <= 0.05
    assert result["train_tokens"] > 0 and result["tokens_per_s"] > 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 81))
    assert all({"loss", "lr", "tokens_per_s", "padding_fraction"} <= r.keys() for r in records)
    model_dir = Path(result["model_dir"])
    assert (model_dir / "config.json").exists() and (model_dir / META_FILE).exists()
    score, exact = greedy_prefix_score(str(model_dir), rows)
    assert score > untrained[0] + 0.3 and exact >= untrained[1], (score, exact, untrained)


@pytest.fixture(scope="module")
def untrained_score(tiny_model_dir):
    return greedy_prefix_score(str(tiny_model_dir), fixed_rows())


@pytest.mark.slow
def test_zero2_learns_the_fixed_set_and_export_beats_untrained(ray_local, tiny_model_dir, untrained_score, tmp_path):
    """ZeRO-2 with the CPU's fast path, precision=amp_bf16 (ZeRO-3 below runs plain fp32)."""
    rows = fixed_rows()
    result = train(_cfg(2, **{"train.precision": "amp_bf16"}), str(tiny_model_dir), rows, str(tmp_path / "z2"))
    _check_learned(result, tmp_path / "z2", untrained_score, rows)
    assert result["restarts"] == 0


@pytest.mark.slow
def test_zero3_survives_a_worker_failure_and_learns(ray_local, tiny_model_dir, untrained_score, tmp_path):
    """The last worker raises once after step 25; the run resumes from the step-20 checkpoint (≤ checkpoint_every
    steps lost) and ends with the planned 80 steps. Rows go in as a JSONL file, the CLI's path."""
    rows = fixed_rows()
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "z3"
    result = train(_cfg(3), str(tiny_model_dir), str(data), str(out), fail_once_at_step=25)
    assert (out / ".injected_failure").exists() and result["restarts"] == 1
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    resumed = [r["step"] for r in records if r["attempt"] == 1]
    assert resumed[0] == 21 and resumed[-1] == 80  # redone from the last checkpoint (step 20), not from 0
    _check_learned(result, out, untrained_score, rows)


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


def test_train_command_needs_data_and_a_real_model(tmp_path):
    from toolace_r.cli import main

    assert main(["train", "--out", str(tmp_path)]) == 2  # no --data
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fixed_rows()))
    assert main(["train", "--data", str(tmp_path / "rows.jsonl"), "--out", str(tmp_path), "model.path=tiny"]) == 2


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


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_workers_that_take_every_cpu_still_get_their_data(ray_local, tiny_model_dir, tmp_path):
    """2 workers × 1 CPU on a 2-CPU Ray: no CPU is left for Ray Data tasks once the workers start, so the shards are
    split in the driver before fit(). An odd number of rows (an equal split must cut a block: a Ray Data task) used
    to hang here."""
    from toolace_r.config import BuiltinPoolConfig
    from toolace_r.data.pool import load_builtin
    from toolace_r.train import rows_from_samples

    assert ray_local.cluster_resources().get("CPU") == 2
    samples, _ = load_builtin(BuiltinPoolConfig(n_train=401, n_heldout=0, seed=0))
    cfg = _cfg(2, **{"train.max_steps": "2", "train.epochs": "1", "train.checkpoint_every": "0"})
    result = train(cfg, str(tiny_model_dir), rows_from_samples(samples, "compact"), str(tmp_path / "all_cpus"))
    assert result["steps"] == 2 and result["rows"] == 400  # an equal split of 401 rows drops one


def test_presplit_hands_each_worker_its_part_and_refuses_another_world_size(ray_local):
    """The driver-side split gives worker i the i-th equal part; Ray Train asking for another number of workers gets
    a clear error instead of a split inside the run (which can wait forever for a CPU the workers hold)."""
    import ray

    from toolace_r.train import _presplit

    dataset = ray.data.from_items([{"i": i} for i in range(7)])
    config = _presplit(dataset, 2)
    shards = config.configure({"train": dataset}, 2, [], [])
    parts = [sorted(row["i"] for row in shard["train"].iter_rows()) for shard in shards]
    assert [len(p) for p in parts] == [3, 3] and not set(parts[0]) & set(parts[1])
    with pytest.raises(RuntimeError, match="3 workers, the data was split for 2"):
        config.configure({"train": dataset}, 3, [], [])
