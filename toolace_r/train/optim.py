"""The DeepSpeed config, precision, gradient checkpointing, the optimizer's parameter groups and the LR schedule, all
from `cfg.train`.

The optimizer (a torch AdamW) and the LR schedule are handed to `deepspeed.initialize` as torch objects rather than
named in the DeepSpeed config: DeepSpeed's own AdamW / cpu_adam compile C++ ops on first use (~35 s each on CPU,
STACK.md), and the same torch objects run on CPU and GPU. On CPU DeepSpeed would also compile a shared-memory comm op
that gloo never uses; `_skip_shm_comm_build` replaces its builder by a no-op (a ~25 s g++ build saved).
"""
from __future__ import annotations

import importlib
import math
import re
from typing import Any

from toolace_r.config import TrainConfig
from toolace_r.errors import ConfigError


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


def enable_gradient_checkpointing(model) -> None:
    """Turn on HF's activation checkpointing of every decoder layer (train.gradient_checkpointing), before any LoRA
    wrapping and before deepspeed.initialize.

    Non-reentrant (`use_reentrant=False`): the torch default going forward, it needs no input that requires grad and
    composes with ZeRO-3's parameter gathering and with autocast. The input embeddings' output is still made to
    require grad (`enable_input_require_grads`) so that under LoRA, with the embeddings frozen, an older
    transformers or a reentrant checkpoint would still see gradients flow into the checkpointed layers. The KV cache
    is off: it is useless in training and HF refuses it together with checkpointing.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name is a deprecated alias
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.enable_input_require_grads()
    model.config.use_cache = False


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


# Parameter names that get no weight decay: HF Trainer's patterns (get_decay_parameter_names), matched on the
# lower-cased dotted name — biases and the weights of LayerNorm / RMSNorm modules (input_layernorm, model.norm, q_norm).
_NO_DECAY_NAME = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")


def no_decay_names(model) -> set[str]:
    """Names (as `model.named_parameters()` gives them) of the parameters that get no weight decay: biases and the
    weights of normalisation layers — by name pattern, or because the owning module's class is a norm.

    By name, not by `p.ndim`: under ZeRO-3 `zero.Init` has already partitioned every parameter into a 1-D shard
    (`p.data` is empty or flat, the real shape is `p.ds_shape`) when the optimizer is built, so a shape test would put
    every weight in the no-decay group and silently switch weight decay off.
    """
    names = set()
    for module_name, module in model.named_modules(remove_duplicate=False):
        is_norm = "norm" in type(module).__name__.lower()  # LayerNorm, LlamaRMSNorm, Qwen2RMSNorm, ...
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if is_norm or _NO_DECAY_NAME.search(full.lower()):
                names.add(full)
    return names


def _param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW's two groups: `weight_decay` on the trainable weights of linear and embedding layers, none on biases and
    norm weights (no_decay_names), as usual for transformers. Parameters keep `model.parameters()`'s order."""
    skip = no_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

