"""Supervised fine-tuning with Ray Train's TorchTrainer and DeepSpeed ZeRO — the same code on CPU (gloo) and GPU (nccl).

One `train()` call, module by module:

    driver.py      validate rows → Ray Data dataset → TorchTrainer(N workers) → fit → OUT/model, OUT/metrics.jsonl
    worker.py      per worker: its shard → tokenise → micro-batches → DeepSpeed steps → checkpoints → final model
    rows.py        training rows, tokenisation (loss on the answer only), length-grouped micro-batches, the schedule
    loss.py        a step's loss = Σ target-token CE over its micro-batches and ranks / the step's global target count
    optim.py       the DeepSpeed config, precision, AdamW parameter groups, the LR schedule
    checkpoint.py  Ray Train checkpoints, metrics and the progress file a run leaves behind as it goes
    export.py      the trained weights as a plain HF model dir (ZeRO-3 gathered, LoRA merged)

The names other modules use are re-exported here (`from toolace_r.train import train`).
"""
from toolace_r.train.checkpoint import CKPT_TAG, FINAL_MARK, HF_SUBDIR, METRICS_FILE, PROGRESS_FILE, read_progress
from toolace_r.train.driver import _presplit, train, train_command
from toolace_r.train.export import _peft_config, gather_state_dict, save_hf_model
from toolace_r.train.optim import _param_groups, autocast_context, deepspeed_config, lr_factor, use_bf16
from toolace_r.train.rows import (
    IGNORE_INDEX,
    ROW_KINDS,
    batch_stats,
    build_schedule,
    collate,
    encode_row,
    load_rows,
    plan_micro_batches,
    rows_from_samples,
    validate_rows,
)

__all__ = [
    "CKPT_TAG", "FINAL_MARK", "HF_SUBDIR", "IGNORE_INDEX", "METRICS_FILE", "PROGRESS_FILE", "ROW_KINDS",
    "_param_groups", "_peft_config", "_presplit", "autocast_context", "batch_stats", "build_schedule", "collate",
    "deepspeed_config", "encode_row", "gather_state_dict", "lr_factor", "load_rows", "plan_micro_batches",
    "read_progress", "rows_from_samples", "save_hf_model", "train", "train_command", "use_bf16", "validate_rows",
]
