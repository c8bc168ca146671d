"""Supervised fine-tuning with Ray Train's TorchTrainer and DeepSpeed ZeRO — the same code on CPU (gloo) and GPU (nccl).

The flow of one `train()` call:

    driver: validate rows → Ray Data dataset → TorchTrainer(N workers, DeepSpeed config from cfg.train) → fit
    worker: its shard → tokenise (prompt masked) → length-grouped micro-batches → DeepSpeed steps
            → every `checkpoint_every` steps `ray.train.report(checkpoint=DeepSpeed checkpoint)`
            → at the end a plain HF model dir (ZeRO-3 weights gathered, LoRA merged) as the final checkpoint
    driver: copies that model dir to OUT/model, writes OUT/metrics.jsonl and OUT/train_summary.json

Why it is built this way:
- Rows reach the workers as Ray Data shards (`get_dataset_shard`), never inside the trainer closure, so a corpus of
  any size costs the driver nothing to ship. The split is `Dataset.split(equal=True)` (a custom DataConfig) rather
  than the default streaming split because it is deterministic: a restarted worker gets the same rows, so resuming at
  "step s" means the same micro-batches as before the failure.
- Every worker must take the same number of steps, or DeepSpeed's collectives hang: workers agree on the minimum
  micro-batch count per epoch (an all-reduce) and drop the rest of that epoch's shuffled batch list.
- Micro-batches are formed by length (sorted within windows, then shuffled), capped by a token budget, so padding
  stays a few percent of the tokens; the fraction is measured per step and reported.
- On CPU DeepSpeed would compile a shared-memory comm op that gloo never uses; replacing `build_shm_op` by a no-op
  skips a ~25 s g++ build (STACK.md). A torch AdamW is passed in so DeepSpeed's own (compiled) optimizers are not needed.
"""
from __future__ import annotations

import importlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from toolace_r.config import Config, TrainConfig
from toolace_r.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt, padding)
GROUP_WINDOW = 2048  # rows sorted by length together; larger = less padding, less batch-composition randomness
CKPT_TAG = "ds"  # DeepSpeed checkpoint tag inside every Ray Train checkpoint
FINAL_MARK = "FINAL"  # file in the last checkpoint: the run is complete, the HF model is in HF_SUBDIR
HF_SUBDIR = "hf_model"
METRICS_FILE = "metrics.jsonl"
PROGRESS_FILE = ".progress.json"  # rank 0's {"step", "total", "attempt", "loss"}, rewritten as it trains; the driver's bar
ROW_KINDS = {"direct", "refine_wrong", "refine_right"}


# ----------------------------------------------------------------------------------------------------------------------
# Training rows and tokenisation (pure functions: no Ray, no DeepSpeed)
# ----------------------------------------------------------------------------------------------------------------------
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


def batch_stats(examples: list[dict]) -> tuple[int, int, int]:
    """(real tokens, padding tokens, target tokens) of a micro-batch."""
    real = sum(len(e["input_ids"]) for e in examples)
    width = max(len(e["input_ids"]) for e in examples)
    target = sum(sum(1 for t in e["labels"] if t != IGNORE_INDEX) for e in examples)
    return real, width * len(examples) - real, target


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


# ----------------------------------------------------------------------------------------------------------------------
# DeepSpeed configuration
# ----------------------------------------------------------------------------------------------------------------------
def use_bf16(tcfg: TrainConfig, on_gpu: bool) -> bool:
    """bf16 weights (DeepSpeed's bf16 mode)."""
    return tcfg.precision == "bf16" or (tcfg.precision == "auto" and on_gpu)


def autocast_context(tcfg: TrainConfig, device: Any):
    """The forward's context: bf16 autocast for precision=amp_bf16 (weights, gradients, optimizer and gradient
    all-reduce stay fp32; matmuls run in bf16), otherwise nothing."""
    import contextlib

    import torch

    if tcfg.precision != "amp_bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def deepspeed_config(tcfg: TrainConfig, world_size: int, on_gpu: bool) -> dict:
    """DeepSpeed config dict from cfg.train. The optimizer and LR schedule are passed to initialize() as torch
    objects, so they are not in here; the batch sizes only satisfy DeepSpeed's bookkeeping (our micro-batches are
    token-budgeted and vary in rows)."""
    zero: dict[str, Any] = {"stage": tcfg.zero_stage}
    if tcfg.zero_stage >= 2:
        zero.update(overlap_comm=on_gpu, contiguous_gradients=True, reduce_scatter=True)
    if tcfg.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if tcfg.offload_optimizer:
        if tcfg.zero_stage == 0:
            raise ConfigError("train.offload_optimizer needs train.zero_stage >= 1")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    ga = max(1, tcfg.grad_accum)
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": ga,
        "train_batch_size": ga * world_size,
        "gradient_clipping": tcfg.grad_clip if tcfg.grad_clip > 0 else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16(tcfg, on_gpu)},
        "zero_allow_untested_optimizer": True,  # a torch AdamW, not DeepSpeed's compiled ones
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,  # our own progress line instead
        "wall_clock_breakdown": False,
    }


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup to 1, then cosine down to min_lr_ratio at total_steps (multiplier of train.lr)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _skip_shm_comm_build() -> None:
    """gloo never uses DeepSpeed's shared-memory comm op; building it costs ~25 s of g++ (and fails without a
    compiler). Replace the builder in the module object before deepspeed.initialize (STACK.md)."""
    module = importlib.import_module("deepspeed.comm.torch")
    module.build_shm_op = lambda: None


def _param_groups(model, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights (1-D tensors), as usual for transformers."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------------------------------------------------
# Export: a plain HF dir
# ----------------------------------------------------------------------------------------------------------------------
def gather_state_dict(engine, zero_stage: int) -> dict | None:
    """The full model state dict on rank 0 (None elsewhere). Under ZeRO-3 every rank must call this: the
    partitioned parameters are gathered layer by layer."""
    import torch.distributed as dist

    if zero_stage == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    if dist.get_rank() == 0:
        return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}
    return None


def save_hf_model(state_dict: dict, base_path: str, out_dir: str | Path, lora=None, module=None, dtype=None) -> Path:
    """Write `state_dict` as a plain HF model dir + the base model's tokenizer and toolace_r.json.

    With LoRA the state dict is the peft model's: it is loaded into a fresh peft wrapper of the base model and merged,
    so the export needs no peft to load. Without LoRA, `module.save_pretrained(state_dict=...)` writes it (the module
    only supplies the config and tied-weight layout, its own — possibly partitioned — tensors are not read).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolace_r.models import META_FILE

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if lora is not None and lora.enabled:
        from peft import get_peft_model

        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
        peft_model = get_peft_model(base, _peft_config(lora))
        missing, unexpected = peft_model.load_state_dict(state_dict, strict=False)
        if unexpected:
            raise RuntimeError(f"LoRA export: unexpected keys {unexpected[:3]}")
        peft_model.merge_and_unload().save_pretrained(out)
    else:
        if module is None:
            module = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
        module.save_pretrained(out, state_dict=state_dict)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(out)
    meta = Path(base_path) / META_FILE
    if meta.is_file():
        shutil.copy(meta, out / META_FILE)
    return out


def _peft_config(lora):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


# ----------------------------------------------------------------------------------------------------------------------
# The worker loop
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class _Totals:
    """Counters summed over all workers, carried in checkpoints so a resumed run reports whole-run figures."""
    real_tokens: float = 0.0
    pad_tokens: float = 0.0
    target_tokens: float = 0.0
    loop_s: float = 0.0
    cpu_s: float = 0.0  # process CPU seconds of all workers in the loop: a load-independent cost on a shared machine


def _train_worker(config: dict) -> None:
    import deepspeed
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from toolace_r.generation import pin_torch_threads
    from toolace_r.models import load_tokenizer

    cfg: Config = config["cfg"]
    tcfg = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    on_gpu = tcfg.use_gpu and torch.cuda.is_available()
    if not on_gpu:
        pin_torch_threads(tcfg.cpus_per_worker)  # same float reduction order on every run (see its docstring)
        _skip_shm_comm_build()
    device = ray.train.torch.get_device() if on_gpu else torch.device("cpu")
    torch.manual_seed(tcfg.seed)
    # Ray Train already made the torch process group; this makes deepspeed.comm wrap it (ZeRO-3's zero.Init reads
    # the world size from it while the model is being built).
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")

    def say(msg: str) -> None:
        """Rank 0's progress line. To the real stdout: Ray Train's patched print would emit it twice (log + tee)."""
        if rank == 0:
            print(f"[train] {msg}", file=sys.__stdout__, flush=True)

    # --- data: this worker's shard, tokenised here -------------------------------------------------------------
    tokenizer = load_tokenizer(config["model_path"], cfg.model.trust_remote_code)
    shard = ray.train.get_dataset_shard("train")
    examples, n_dropped, n_truncated = [], 0, 0
    for row in shard.iter_rows():
        enc = encode_row(tokenizer, json.loads(row["chat"]), row["completion"], tcfg.max_length)
        if enc is None:
            n_dropped += 1
            continue
        n_truncated += enc.pop("truncated")
        examples.append(enc)
    counts = torch.tensor([len(examples), n_dropped, n_truncated], dtype=torch.long, device=device)
    dist.all_reduce(counts)
    if int(counts[1]) or int(counts[2]):
        say(f"{int(counts[1])} rows dropped (answer ≥ max_length={tcfg.max_length}), {int(counts[2])} prompts cut from the left")

    def agree_min(n: int) -> int:
        t = torch.tensor([n], dtype=torch.long, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    if agree_min(len(examples)) == 0:  # every rank raises, none is left waiting in a collective
        raise DataError(f"a worker got no usable rows ({int(counts[0])} in all, max_length={tcfg.max_length}): "
                        f"use fewer workers or more data")
    lengths = [len(e["input_ids"]) for e in examples]
    schedule, total_steps = build_schedule(len(examples), lengths, tcfg, agree_min, world)
    if total_steps == 0:
        raise DataError(
            f"{int(counts[0])} rows give 0 optimizer steps with {world} workers, grad_accum={tcfg.grad_accum}, "
            f"tokens_per_micro_batch={tcfg.tokens_per_micro_batch}: use more data or smaller batches")

    # --- model, optimizer, schedule, engine --------------------------------------------------------------------
    bf16 = use_bf16(tcfg, on_gpu)
    ds_config = deepspeed_config(tcfg, world, on_gpu)
    hf_ds_config = None
    if tcfg.zero_stage == 3 and not tcfg.lora.enabled:
        # Keeps a reference alive so from_pretrained builds the model already partitioned (zero.Init): no rank
        # holds the whole model. transformers reads this global while the object exists.
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds_config = HfDeepSpeedConfig(ds_config)  # noqa: F841
    model = AutoModelForCausalLM.from_pretrained(
        config["model_path"], dtype=torch.bfloat16 if bf16 else torch.float32, trust_remote_code=cfg.model.trust_remote_code)
    model.config.use_cache = False
    if tcfg.lora.enabled:
        from peft import get_peft_model

        model = get_peft_model(model, _peft_config(tcfg.lora))
    optimizer = torch.optim.AdamW(_param_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=tuple(tcfg.betas))
    schedule_fn = lambda opt: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
        opt, lambda s: lr_factor(s, tcfg.warmup_steps, total_steps, tcfg.min_lr_ratio))
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule_fn,
                                                   config=ds_config)

    # --- resume -------------------------------------------------------------------------------------------------
    start_step, totals, records, attempt = 0, _Totals(), [], 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            if (Path(ckpt_dir) / FINAL_MARK).exists():
                say("the last checkpoint is the final model: nothing left to train")
                ray.train.report({"step": total_steps, "done": True}, checkpoint=None)
                return
            _, client = engine.load_checkpoint(ckpt_dir, tag=CKPT_TAG)
            start_step = int(client["step"])
            totals = _Totals(**client["totals"])
            attempt = int(client.get("attempt", 0)) + 1
            if rank == 0 and (Path(ckpt_dir) / METRICS_FILE).exists():
                records = [json.loads(x) for x in (Path(ckpt_dir) / METRICS_FILE).read_text().splitlines() if x]
        say(f"resumed from the checkpoint at step {start_step} (attempt {attempt})")
    metrics_path = Path(config["out_dir"]) / METRICS_FILE
    if rank == 0:
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    live = open(metrics_path, "a", encoding="utf-8") if rank == 0 else None
    progress_path = Path(config["out_dir"]) / PROGRESS_FILE
    last_progress = 0.0
    if rank == 0:
        _write_progress(progress_path, start_step, total_steps, attempt, None)

    precision = "bf16" if bf16 else "fp32 + bf16 autocast" if tcfg.precision == "amp_bf16" else "fp32"
    say(f"{int(counts[0])} rows on {world} workers, ZeRO-{tcfg.zero_stage}, {precision}, "
        f"{total_steps} steps × {tcfg.grad_accum} micro-batches/worker, lr {tcfg.lr:g}, "
        f"{sum(getattr(p, 'ds_numel', p.numel()) for p in model.parameters() if p.requires_grad):,} trainable params")

    if tcfg.warmup_steps >= total_steps:
        say(f"warning: train.warmup_steps={tcfg.warmup_steps} >= {total_steps} steps: the LR never reaches train.lr")

    # --- loop ---------------------------------------------------------------------------------------------------
    ga = max(1, tcfg.grad_accum)
    log_every = max(1, total_steps // 20)
    fail_at = int(config.get("fail_once_at_step") or 0)
    engine.train()
    for step in range(start_step, total_steps):
        t0, cpu0 = time.perf_counter(), time.process_time()
        stats = torch.zeros(6, dtype=torch.float64)  # loss sum, micro-batches, real, pad, target tokens, CPU s
        for micro in schedule[step * ga:(step + 1) * ga]:
            batch_examples = [examples[i] for i in micro]
            batch = {k: v.to(device) for k, v in collate(batch_examples, tokenizer.pad_token_id).items()}
            with autocast_context(tcfg, device):
                loss = engine(**batch, use_cache=False).loss
            engine.backward(loss)
            engine.step()
            real, pad, target = batch_stats(batch_examples)
            stats += torch.tensor([loss.item(), 1, real, pad, target, 0.0], dtype=torch.float64)
        if fail_at and step + 1 == fail_at and config.get("fail_marker") and rank == world - 1:
            marker = Path(config["fail_marker"])
            if not marker.exists():  # fail once only: the marker survives the restart
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(f"failed at step {step + 1}\n")
                raise RuntimeError(f"injected failure at step {step + 1} (test of fault tolerance)")
        stats[5] = time.process_time() - cpu0
        stats = stats.to(device)
        dist.all_reduce(stats)
        stats = stats.cpu().tolist()
        dt = time.perf_counter() - t0
        totals.real_tokens += stats[2]
        totals.pad_tokens += stats[3]
        totals.target_tokens += stats[4]
        totals.loop_s += dt
        totals.cpu_s += stats[5]
        done = step + 1
        record = {
            "step": done, "epoch": round(done / max(1, total_steps) * max(tcfg.epochs, 0), 4),
            "loss": stats[0] / max(1, stats[1]), "lr": scheduler.get_last_lr()[0],
            "tokens": int(stats[2]), "target_tokens": int(stats[4]),
            "tokens_per_s": stats[2] / dt if dt > 0 else 0.0,
            "padding_fraction": stats[3] / max(1.0, stats[2] + stats[3]),
            "step_s": dt, "attempt": attempt,
        }
        if rank == 0:
            records.append(record)
            live.write(json.dumps(record) + "\n")
            live.flush()
            if time.monotonic() - last_progress >= 0.5 or done == total_steps:
                _write_progress(progress_path, done, total_steps, attempt, record["loss"])
                last_progress = time.monotonic()
            if done % log_every == 0 or done == total_steps or done == start_step + 1:
                eta = totals.loop_s / max(1, done - 0) * (total_steps - done)
                say(f"step {done}/{total_steps} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
                    f"{record['tokens_per_s']:,.0f} tok/s | pad {record['padding_fraction']:.1%} | eta {eta:.0f}s")
        if tcfg.checkpoint_every > 0 and done % tcfg.checkpoint_every == 0 and done < total_steps:
            _report_checkpoint(engine, done, totals, attempt, records if rank == 0 else None,
                               {"step": done, "loss": record["loss"]})

    # --- export -------------------------------------------------------------------------------------------------
    state_dict = gather_state_dict(engine, tcfg.zero_stage)
    export_dir = Path(tempfile.mkdtemp(prefix="toolace_export_"))
    summary = {
        "step": total_steps, "done": True,
        "tokens_per_s": totals.real_tokens / totals.loop_s if totals.loop_s else 0.0,
        "padding_fraction": totals.pad_tokens / max(1.0, totals.real_tokens + totals.pad_tokens),
        "train_tokens": int(totals.real_tokens), "target_tokens": int(totals.target_tokens),
        "loop_s": totals.loop_s, "cpu_s": totals.cpu_s, "attempt": attempt, "rows": int(counts[0]),
    }
    if rank == 0:
        live.close()
        hf_dir = save_hf_model(state_dict, config["model_path"], export_dir / HF_SUBDIR, lora=tcfg.lora,
                               module=None if tcfg.lora.enabled else engine.module,
                               dtype=torch.bfloat16 if bf16 else torch.float32)
        from toolace_r.models import write_meta

        if not (hf_dir / "toolace_r.json").exists():
            write_meta(hf_dir, prompt_style=cfg.model.prompt_style)
        write_meta(hf_dir, trained_from=str(config["model_path"]), train_steps=total_steps)
        (export_dir / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
        (export_dir / FINAL_MARK).write_text(json.dumps(summary))
        say(f"done: {total_steps} steps, {summary['tokens_per_s']:,.0f} tok/s, padding {summary['padding_fraction']:.1%}")
    ray.train.report(summary, checkpoint=ray.train.Checkpoint.from_directory(str(export_dir)) if rank == 0 else None)
    shutil.rmtree(export_dir, ignore_errors=True)


def _write_progress(path: Path, step: int, total: int, attempt: int, loss: float | None) -> None:
    """Rank 0's progress for the driver's bar (read_progress), replaced in one rename. Best effort: OUT may not be
    reachable from a worker on another node, and a progress bar is not worth failing a training run for."""
    try:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"step": step, "total": total, "attempt": attempt, "loss": loss}))
        os.replace(tmp, path)
    except OSError:
        pass


def read_progress(path: Path) -> tuple[int, int | None, str]:
    """(steps done, total steps, "loss x | attempt n") from a PROGRESS_FILE; raises while there is none."""
    data = json.loads(Path(path).read_text())
    notes = [f"loss {data['loss']:.3f}"] if data.get("loss") is not None else []
    if data.get("attempt"):
        notes.append(f"attempt {int(data['attempt']) + 1}")
    return int(data["step"]), int(data["total"]), " | ".join(notes)


def _report_checkpoint(engine, step: int, totals: _Totals, attempt: int, records: list | None, metrics: dict) -> None:
    """Every rank writes its DeepSpeed shard into its own temp dir; Ray Train merges them into one checkpoint dir."""
    import dataclasses

    import ray.train

    tmp = Path(tempfile.mkdtemp(prefix="toolace_ckpt_"))
    try:
        engine.save_checkpoint(str(tmp), tag=CKPT_TAG, client_state={
            "step": step, "totals": dataclasses.asdict(totals), "attempt": attempt})
        if records is not None:
            (tmp / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)))
        _wait_until_report_collected()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_until_report_collected(timeout_s: float = 120.0) -> None:
    """Block until Ray Train's controller has taken this worker's last report off the worker's queue.

    Why: `ray.train.report` returns once the report is queued inside the worker; the controller polls the queues
    every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s) and registers a checkpoint only once it holds every rank's report.
    A worker process killed inside that window takes its queued report with it, the checkpoint is never registered,
    and the restart resumes from the one before — or from step 0 — redoing more than checkpoint_every steps (found
    by tests/test_faults.py, issue 10). Waiting costs at most one poll interval per checkpoint. It reads Ray Train
    v2 internals; where they are absent (another Ray version) it returns at once.
    """
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        pending = get_train_context().execution_context.result_queue
        _ = pending.unfinished_tasks
    except Exception:  # noqa: BLE001 - not Ray Train v2: nothing to wait for
        return
    deadline = time.monotonic() + timeout_s
    while pending.unfinished_tasks and time.monotonic() < deadline:
        time.sleep(0.02)


# ----------------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------------
def _presplit(dataset: Any, world_size: int):
    """DataConfig that hands worker i the i-th part of `Dataset.split(world, equal=True)`, split here in the driver.

    Deterministic: the same rows for a worker on every attempt (the default streaming split hands out blocks
    first-come, first-served). Split before `fit()`: once the workers hold every CPU of the cluster, a split that
    needs Ray Data tasks would wait for a free CPU forever (train.num_workers × cpus_per_worker = all CPUs)."""
    from ray.train import DataConfig

    parts = dataset.split(world_size, equal=True)

    class PreSplit(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            if world_size != len(parts):  # a split here could wait forever for a CPU (see above): say so instead
                raise RuntimeError(f"Ray Train started {world_size} workers, the data was split for {len(parts)}: "
                                   "toolace-r trains with a fixed train.num_workers (no elastic scaling)")
            return [{"train": part.iterator()} for part in parts]

    return PreSplit()


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def train(cfg: Config, model_path: str, data: str | list[dict], out_dir: str, *, fail_once_at_step: int = 0) -> dict:
    """Fine-tune `model_path` on training rows with Ray Train + DeepSpeed; the model lands in OUT/model.

    Returns model_dir, steps, loss_first, loss_last (means of the first/last few steps), tokens_per_s (real tokens
    over the training loop, all workers), padding_fraction, train_tokens (prompt + target tokens processed), wall_s
    (including Ray Train start-up), plus restarts and the Ray Train storage path.
    `fail_once_at_step` makes the last worker raise once after that step (fault-tolerance tests): a marker file in
    OUT records that it happened, so the restarted attempt trains through.

    On a multi-node cluster, `model_path` must be readable on every node (shared disk or hub name) and
    train.storage_path must be shared storage (NFS, s3://...): checkpoints and the final model travel through it,
    so OUT only has to exist on the driver. OUT/metrics.jsonl is also written live by rank 0 when OUT is reachable.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from toolace_r.io import write_json, write_text

    t_start = time.time()
    tcfg = cfg.train
    if model_path in ("", "tiny"):
        raise ConfigError("model.path must be a model directory or hub name (build one with `toolace-r tiny-model`)")
    if tcfg.num_workers < 1:
        raise ConfigError(f"train.num_workers = {tcfg.num_workers}, expected >= 1")
    if len(tcfg.betas) != 2:
        raise ConfigError(f"train.betas = {tcfg.betas}, expected two numbers")
    if tcfg.tokens_per_micro_batch < 1 or tcfg.max_length < 2:
        raise ConfigError("train.tokens_per_micro_batch and train.max_length must be positive")
    rows = load_rows(data, cfg.model.prompt_style)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    local_model = Path(model_path)
    model_ref = str(local_model.resolve()) if local_model.exists() else model_path

    from toolace_r.console import Progress, watch
    from toolace_r.driver import init_ray

    init_ray(cfg)  # nothing when Ray is up (the driver's, a test's)
    dataset = ray.data.from_items(
        [{"id": r["id"], "kind": r["kind"], "chat": json.dumps(r["chat"], ensure_ascii=False), "completion": r["completion"]}
         for r in rows])

    dataset.context.enable_progress_bars = False  # workers read their shard in one go; the bars only add noise
    # Worker i gets rows [i·n/w, (i+1)·n/w) of `rows` in this order (_presplit: split_at_indices, independent of the
    # block layout), and reads them in order: the same config trains on the same micro-batches on every run.
    dataset.context.execution_options.preserve_order = True
    storage = Path(tcfg.storage_path).resolve() if tcfg.storage_path and "://" not in tcfg.storage_path else None
    storage_path = tcfg.storage_path if tcfg.storage_path and storage is None else str(storage or out / "ray_train")
    run_name = f"train-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"  # a reused name would resume that run
    resources = {"CPU": tcfg.cpus_per_worker}
    if tcfg.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "cfg": cfg, "model_path": model_ref, "out_dir": str(out),
            "fail_once_at_step": fail_once_at_step, "fail_marker": str(out / ".injected_failure") if fail_once_at_step else "",
        },
        scaling_config=ScalingConfig(num_workers=tcfg.num_workers, use_gpu=tcfg.use_gpu,
                                     resources_per_worker=resources, placement_strategy=tcfg.placement_strategy),
        torch_config=TorchConfig(backend="nccl" if tcfg.use_gpu else "gloo"),
        datasets={"train": dataset},
        dataset_config=_presplit(dataset, tcfg.num_workers),
        run_config=RunConfig(name=run_name, storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=tcfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    log.info("training %d rows on %d workers (ZeRO-%d), Ray Train run %s/%s", len(rows), tcfg.num_workers,
             tcfg.zero_stage, storage_path, run_name)
    progress_file = out / PROGRESS_FILE
    progress_file.unlink(missing_ok=True)  # an earlier run's
    with Progress("train", None, "steps") as bar, watch(bar, lambda: read_progress(progress_file)):
        result = trainer.fit()
    progress_file.unlink(missing_ok=True)
    if result.error:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {run_name} finished without a final checkpoint")

    model_dir = out / "model"
    with result.checkpoint.as_directory() as ckpt_dir:
        ckpt = Path(ckpt_dir)
        staging = out / f".model.{uuid.uuid4().hex[:6]}"
        shutil.copytree(ckpt / HF_SUBDIR, staging)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        os.replace(staging, model_dir)
        write_text(out / METRICS_FILE, (ckpt / METRICS_FILE).read_text())
        final = json.loads((ckpt / FINAL_MARK).read_text())
    records = [json.loads(x) for x in (out / METRICS_FILE).read_text().splitlines() if x]
    k = max(1, min(5, len(records) // 4))
    summary = {
        "model_dir": str(model_dir),
        "steps": int(final["step"]),
        "loss_first": _mean([r["loss"] for r in records[:k]]),
        "loss_last": _mean([r["loss"] for r in records[-k:]]),
        "tokens_per_s": final["tokens_per_s"],
        "padding_fraction": final["padding_fraction"],
        "train_tokens": final["train_tokens"],
        "target_tokens": final["target_tokens"],
        "rows": final["rows"],
        "wall_s": time.time() - t_start,
        "loop_s": final["loop_s"],
        "cpu_s": final["cpu_s"],
        "restarts": final["attempt"],
        "zero_stage": tcfg.zero_stage,
        "num_workers": tcfg.num_workers,
        "ray_train_path": f"{storage_path}/{run_name}",
    }
    write_json(out / "train_summary.json", summary)
    log.info("trained %d steps: loss %.4f → %.4f, %.0f tok/s, padding %.1f%%, model at %s", summary["steps"],
             summary["loss_first"], summary["loss_last"], summary["tokens_per_s"], 100 * summary["padding_fraction"],
             model_dir)
    return summary


def train_command(args, cfg: Config) -> int:
    """`toolace-r train --config F --data FILE --out DIR model.path=DIR`."""
    if not args.data:
        raise ConfigError("train needs --data (a JSONL of training rows, or a pool file)")
    out_dir = args.out or str(Path(cfg.run.dir) / "train")
    summary = train(cfg, cfg.model.path, args.data, out_dir)
    print(json.dumps(summary, indent=2))
    return 0
