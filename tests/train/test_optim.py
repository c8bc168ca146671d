"""toolace_r.train.optim: the LR schedule, the DeepSpeed config and precision — no Ray."""
from __future__ import annotations

import pytest

from toolace_r.config import load_config
from toolace_r.train import deepspeed_config, lr_factor


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


