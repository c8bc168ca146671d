"""The Ray Train worker loop: one process per `train.num_workers`, run by TorchTrainer.

    its shard → tokenise (prompt masked) → length-grouped micro-batches → DeepSpeed steps
    (each step's loss: Σ target-token CE over its micro-batches and ranks / the step's global target count, loss.py)
    → every `checkpoint_every` steps `ray.train.report(checkpoint=DeepSpeed checkpoint)`
    → at the end a plain HF model dir (ZeRO-3 weights gathered, LoRA merged) as the final checkpoint

A restarted worker (Ray Train's FailureConfig) rebuilds the same schedule from the same shard (the driver's split is
deterministic), loads the last checkpoint and continues at its step; a last checkpoint that is already the final model
means there is nothing left to do.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from toolace_r import testing
from toolace_r.config import Config, TrainConfig
from toolace_r.errors import DataError
from toolace_r.train.checkpoint import (
    CKPT_TAG,
    FINAL_MARK,
    HF_SUBDIR,
    METRICS_FILE,
    PROGRESS_FILE,
    _report_checkpoint,
    _Totals,
    _write_progress,
)
from toolace_r.train.export import _peft_config, gather_state_dict, save_hf_model
from toolace_r.train.loss import (
    deepspeed_loss_factor,
    global_step_targets,
    hf_takes_num_items,
    micro_batch_step,
    step_target_counts,
)
from toolace_r.train.optim import (
    _param_groups,
    _skip_shm_comm_build,
    autocast_context,
    deepspeed_config,
    enable_gradient_checkpointing,
    lr_factor,
    use_bf16,
)
from toolace_r.train.rows import batch_stats, build_schedule, collate, encode_row


def _tokenise_shard(tokenizer: Any, rows: Any, max_length: int) -> tuple[list[dict], int, int]:
    """(examples, rows dropped because the answer alone does not fit, prompts cut from the left) of a shard."""
    examples, n_dropped, n_truncated = [], 0, 0
    for row in rows:
        enc = encode_row(tokenizer, json.loads(row["chat"]), row["completion"], max_length)
        if enc is None:
            n_dropped += 1
            continue
        n_truncated += enc.pop("truncated")
        examples.append(enc)
    return examples, n_dropped, n_truncated


def _build_engine(config: dict, tcfg: TrainConfig, world: int, on_gpu: bool, total_steps: int):
    """(engine, LR scheduler, bf16): the model loaded (already partitioned under ZeRO-3), LoRA applied, a torch AdamW
    and the warmup + cosine schedule handed to deepspeed.initialize."""
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM

    cfg: Config = config["cfg"]
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
    if tcfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if tcfg.lora.enabled:
        from peft import get_peft_model

        model = get_peft_model(model, _peft_config(tcfg.lora))
    optimizer = torch.optim.AdamW(_param_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=tuple(tcfg.betas))
    schedule_fn = lambda opt: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
        opt, lambda s: lr_factor(s, tcfg.warmup_steps, total_steps, tcfg.min_lr_ratio))
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule_fn,
                                                   config=ds_config)
    return engine, scheduler, bf16


def _resume(engine, rank: int, say: Callable[[str], None]) -> tuple[int, _Totals, list, int] | None:
    """(start step, totals, rank 0's metric records, attempt) from Ray Train's last checkpoint — (0, ...) when there
    is none; None when the last checkpoint is already the final model."""
    import ray.train

    start_step, totals, records, attempt = 0, _Totals(), [], 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            if (Path(ckpt_dir) / FINAL_MARK).exists():
                return None
            _, client = engine.load_checkpoint(ckpt_dir, tag=CKPT_TAG)
            start_step = int(client["step"])
            totals = _Totals(**client["totals"])
            attempt = int(client.get("attempt", 0)) + 1
            if rank == 0 and (Path(ckpt_dir) / METRICS_FILE).exists():
                records = [json.loads(x) for x in (Path(ckpt_dir) / METRICS_FILE).read_text().splitlines() if x]
        say(f"resumed from the checkpoint at step {start_step} (attempt {attempt})")
    return start_step, totals, records, attempt


def _train_worker(config: dict) -> None:
    import deepspeed
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from toolace_r.generation import pin_torch_threads
    from toolace_r.models import load_tokenizer, resolve_model_path

    # A model dir in object storage (a remote run dir's iter_NNN/model) is read from this node's cached copy; the
    # export reads the tokenizer and toolace_r.json from the same local dir.
    config = {**config, "model_path": resolve_model_path(config["model_path"]), "model_ref": config["model_path"]}
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
    examples, n_dropped, n_truncated = _tokenise_shard(
        tokenizer, ray.train.get_dataset_shard("train").iter_rows(), tcfg.max_length)
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

    # Each step's target tokens over all ranks (one all_reduce for the whole run): the loss's denominator (loss.py)
    step_targets = global_step_targets(step_target_counts(examples, schedule, tcfg.grad_accum, total_steps), device)

    engine, scheduler, bf16 = _build_engine(config, tcfg, world, on_gpu, total_steps)
    loss_factor, use_hf_loss = deepspeed_loss_factor(engine), hf_takes_num_items(engine.module)
    resumed = _resume(engine, rank, say)
    if resumed is None:
        say("the last checkpoint is the final model: nothing left to train")
        ray.train.report({"step": total_steps, "done": True}, checkpoint=None)
        return
    start_step, totals, records, attempt = resumed

    # Rank 0's live files in OUT; OUT that is the driver's mirror of a remote run dir exists on the driver's node only
    writes_live = rank == 0 and config.get("out_node", "") in ("", ray.get_runtime_context().get_node_id())
    metrics_path = Path(config["out_dir"]) / METRICS_FILE
    if writes_live:
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    live = open(metrics_path, "a", encoding="utf-8") if writes_live else None
    progress_path = Path(config["out_dir"]) / PROGRESS_FILE
    last_progress = 0.0
    if writes_live:
        _write_progress(progress_path, start_step, total_steps, attempt, None)

    precision = "bf16" if bf16 else "fp32 + bf16 autocast" if tcfg.precision == "amp_bf16" else "fp32"
    say(f"{int(counts[0])} rows on {world} workers, ZeRO-{tcfg.zero_stage}, {precision}, "
        f"{total_steps} steps × {tcfg.grad_accum} micro-batches/worker, lr {tcfg.lr:g}, "
        f"{sum(getattr(p, 'ds_numel', p.numel()) for p in engine.module.parameters() if p.requires_grad):,} trainable params")

    if tcfg.warmup_steps >= total_steps:
        say(f"warning: train.warmup_steps={tcfg.warmup_steps} >= {total_steps} steps: the LR never reaches train.lr")

    # --- loop ---------------------------------------------------------------------------------------------------
    ga = max(1, tcfg.grad_accum)
    log_every = max(1, total_steps // 20)
    engine.train()
    for step in range(start_step, total_steps):
        t0, cpu0 = time.perf_counter(), time.process_time()
        # step loss (Σ of the micro-batches' shares Σ CE / N_step), micro-batches, real, pad, target tokens, CPU s
        stats = torch.zeros(6, dtype=torch.float64)
        for micro in schedule[step * ga:(step + 1) * ga]:
            batch_examples = [examples[i] for i in micro]
            batch = {k: v.to(device) for k, v in collate(batch_examples, tokenizer.pad_token_id).items()}
            share = micro_batch_step(engine, batch, step_targets[step], loss_factor, use_hf_loss,
                                     autocast=lambda: autocast_context(tcfg, device))
            real, pad, target = batch_stats(batch_examples)
            stats += torch.tensor([share, 1, real, pad, target, 0.0], dtype=torch.float64)
        testing.maybe_fail_step(config, step + 1, rank, world)  # fault tests only (toolace_r.testing)
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
            "loss": stats[0], "lr": scheduler.get_last_lr()[0],
            "tokens": int(stats[2]), "target_tokens": int(stats[4]),
            "tokens_per_s": stats[2] / dt if dt > 0 else 0.0,
            "padding_fraction": stats[3] / max(1.0, stats[2] + stats[3]),
            "step_s": dt, "attempt": attempt,
        }
        if rank == 0:
            records.append(record)
        if live is not None:
            live.write(json.dumps(record) + "\n")
            live.flush()
            if time.monotonic() - last_progress >= 0.5 or done == total_steps:
                _write_progress(progress_path, done, total_steps, attempt, record["loss"])
                last_progress = time.monotonic()
        if rank == 0:
            if done % log_every == 0 or done == total_steps or done == start_step + 1:
                eta = totals.loop_s / max(1, done - 0) * (total_steps - done)
                say(f"step {done}/{total_steps} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
                    f"{record['tokens_per_s']:,.0f} tok/s | pad {record['padding_fraction']:.1%} | eta {eta:.0f}s")
        if tcfg.checkpoint_every > 0 and done % tcfg.checkpoint_every == 0 and done < total_steps:
            _report_checkpoint(engine, done, totals, attempt, records if rank == 0 else None,
                               {"step": done, "loss": record["loss"]})

    if live is not None:
        live.close()
    _export(engine, config, rank, total_steps, totals, attempt, int(counts[0]), records, bf16, say)


def _export(engine, config: dict, rank: int, total_steps: int, totals: _Totals, attempt: int, n_rows: int,
            records: list, bf16: bool, say: Callable[[str], None]) -> None:
    """Report the final checkpoint: the HF model dir, rank 0's metrics and FINAL_MARK with the run's summary. Every
    rank calls this (ZeRO-3 gathers the weights with collectives)."""
    import ray.train
    import torch

    cfg: Config = config["cfg"]
    tcfg = cfg.train
    state_dict = gather_state_dict(engine, tcfg.zero_stage)
    export_dir = Path(tempfile.mkdtemp(prefix="toolace_export_"))
    summary = {
        "step": total_steps, "done": True,
        "tokens_per_s": totals.real_tokens / totals.loop_s if totals.loop_s else 0.0,
        "padding_fraction": totals.pad_tokens / max(1.0, totals.real_tokens + totals.pad_tokens),
        "train_tokens": int(totals.real_tokens), "target_tokens": int(totals.target_tokens),
        "loop_s": totals.loop_s, "cpu_s": totals.cpu_s, "attempt": attempt, "rows": n_rows,
        # rank 0's peak of torch's allocator this attempt (benchmarks/gpu_smoke.py sets it beside the plan); 0 on CPU
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if tcfg.use_gpu and torch.cuda.is_available() else 0,
    }
    if rank == 0:
        hf_dir = save_hf_model(state_dict, config["model_path"], export_dir / HF_SUBDIR, lora=tcfg.lora,
                               module=None if tcfg.lora.enabled else engine.module,
                               dtype=torch.bfloat16 if bf16 else torch.float32, prompt_style=cfg.model.prompt_style)
        from toolace_r.models import write_meta

        if not (hf_dir / "toolace_r.json").exists():
            write_meta(hf_dir, prompt_style=cfg.model.prompt_style)
        write_meta(hf_dir, keep_answer=cfg.refine.keep_answer)  # how its refinement rows kept a right answer
        write_meta(hf_dir, trained_from=str(config.get("model_ref", config["model_path"])), train_steps=total_steps)
        (export_dir / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
        (export_dir / FINAL_MARK).write_text(json.dumps(summary))
        say(f"done: {total_steps} steps, {summary['tokens_per_s']:,.0f} tok/s, padding {summary['padding_fraction']:.1%}")
    ray.train.report(summary, checkpoint=ray.train.Checkpoint.from_directory(str(export_dir)) if rank == 0 else None)
    shutil.rmtree(export_dir, ignore_errors=True)
