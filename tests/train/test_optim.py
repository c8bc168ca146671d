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




def _grads_of_one_backward(model_dir, checkpointing: bool, lora=None) -> tuple[dict, int]:
    """({name: grad}, forward calls of layer 0's MLP) of one training-mode forward + backward on a fixed batch."""
    import torch
    from transformers import AutoModelForCausalLM

    from toolace_r.train import _peft_config
    from toolace_r.train.optim import enable_gradient_checkpointing

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    if checkpointing:
        enable_gradient_checkpointing(model)
    if lora is not None:
        from peft import get_peft_model

        torch.manual_seed(0)  # LoRA A's random init: the same in both models
        model = get_peft_model(model, _peft_config(lora))
    calls = []
    layer = model.get_base_model().model.layers[0] if lora is not None else model.model.layers[0]
    mlp_forward = layer.mlp.forward  # inside the checkpointed forward: runs again in the backward (hooks do not)
    layer.mlp.forward = lambda *a, **k: calls.append(1) or mlp_forward(*a, **k)
    model.train()
    torch.manual_seed(0)
    ids = torch.randint(3, 500, (2, 24))
    labels = ids.clone()
    labels[:, :10] = -100
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, use_cache=False).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return grads, len(calls)


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, lora):
    """train.gradient_checkpointing recomputes activations in the backward (a second forward of every layer) and gives
    the same gradients, for full fine-tuning and for LoRA (frozen embeddings)."""
    import torch

    lcfg = load_config(None, ["train.lora.enabled=true", "train.lora.r=4"]).train.lora if lora else None
    plain, plain_calls = _grads_of_one_backward(tiny_model_dir, False, lcfg)
    ckpt, ckpt_calls = _grads_of_one_backward(tiny_model_dir, True, lcfg)
    assert plain_calls == 1 and ckpt_calls == 2  # the layer really was recomputed in the backward
    assert plain.keys() == ckpt.keys() and plain
    assert any(g.abs().sum() > 0 for g in ckpt.values())
    for name in plain:
        assert torch.allclose(plain[name], ckpt[name], atol=1e-6, rtol=1e-5), name
    assert load_config(None, []).train.gradient_checkpointing is False  # off unless a job asks (the 8B job does)
    assert load_config("jobs/llama31_8b.yaml", []).train.gradient_checkpointing is True


def _old_ndim_groups(model) -> list[list]:
    """The rule before issue 19: decay exactly the >= 2-D trainable tensors (wrong once ZeRO-3 has flattened them)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [[p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]]


def test_weight_decay_groups_of_the_tiny_llamas_are_unchanged(tiny_model_dir):
    """For the Llamas of the demo and the tests (no biases) the name rule gives exactly the groups, in the same order,
    that the 1-D rule gave: the demo's training stays bit-identical."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    import toolace_r
    from toolace_r.train import _param_groups

    for path in (tiny_model_dir, Path(toolace_r.__file__).parent / "assets" / "tiny-base"):
        model = AutoModelForCausalLM.from_pretrained(str(path))
        groups = _param_groups(model, 0.1)
        assert [[id(p) for p in g["params"]] for g in groups] == [[id(p) for p in g] for g in _old_ndim_groups(model)]
        assert [g["weight_decay"] for g in groups] == [0.1, 0.0]


def _tiny_biased_model(out) -> list[str]:
    """A tiny Qwen2 (q/k/v projections with biases, RMSNorms, untied head) saved to `out`; its parameter names."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    return [n for n, _ in model.named_parameters()]


def _expected_decay(names: list[str]) -> tuple[list[str], list[str]]:
    decay = [n for n in names if n.endswith("proj.weight") or n in ("model.embed_tokens.weight", "lm_head.weight")]
    return decay, [n for n in names if n not in decay]


def test_weight_decay_is_by_name_whatever_the_shapes(tmp_path):
    """Biases and norm weights get no decay, the weights of Linear and Embedding layers do — also when every
    parameter is 1-D, as after ZeRO-3's partitioning (p.data flattened here)."""
    from transformers import AutoModelForCausalLM

    from toolace_r.train import _param_groups

    names = _tiny_biased_model(tmp_path / "qwen")
    decay, no_decay = _expected_decay(names)
    assert any(n.endswith(".bias") for n in no_decay) and "model.norm.weight" in no_decay
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "qwen"))
    by_id = {id(p): n for n, p in model.named_parameters()}
    for p in model.parameters():
        p.data = p.data.reshape(-1)  # what zero.Init leaves: a flat shard, the full shape only in p.ds_shape
    groups = _param_groups(model, 0.1)
    assert [by_id[id(p)] for p in groups[0]["params"]] == decay
    assert [by_id[id(p)] for p in groups[1]["params"]] == no_decay
    assert _old_ndim_groups(model)[0] == []  # the 1-D rule would have decayed nothing


ZERO3_GROUPS = """
import json, os, sys
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import deepspeed, torch
from transformers import AutoModelForCausalLM
from transformers.integrations import HfDeepSpeedConfig
from toolace_r.config import load_config
from toolace_r.train.optim import _param_groups, _skip_shm_comm_build, deepspeed_config
_skip_shm_comm_build()
deepspeed.init_distributed(dist_backend="gloo")
keep = HfDeepSpeedConfig(deepspeed_config(load_config(None, ["train.zero_stage=3"]).train, 1, False))
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)  # built partitioned (zero.Init)
names = {id(p): n for n, p in model.named_parameters()}
groups = _param_groups(model, 0.1)
print(json.dumps({"ndims": sorted({p.ndim for p in model.parameters()}),
                  "partitioned": all(hasattr(p, "ds_shape") for p in model.parameters()),
                  "groups": [[names[id(p)] for p in g["params"]] for g in groups]}))
"""


def test_weight_decay_groups_under_real_zero3(tmp_path):
    """The model built the way the worker builds it under ZeRO-3 (HfDeepSpeedConfig → zero.Init, one gloo rank, in a
    subprocess so this test process keeps no process group): every parameter is a 1-D shard, and the groups are
    still by name."""
    import json
    import os
    import subprocess
    import sys

    from processes import free_port

    names = _tiny_biased_model(tmp_path / "qwen")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", ZERO3_GROUPS, str(tmp_path / "qwen"), str(free_port())],
                          capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["partitioned"] and report["ndims"] == [1]
    assert report["groups"] == list(_expected_decay(names))
