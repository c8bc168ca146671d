"""toolace_r.plan: the memory plan of a job, checked against DeepSpeed's own estimators and against the measured peak
tensor memory of the demo model's training step on CPU."""
from __future__ import annotations

import json
import weakref
from argparse import Namespace
from pathlib import Path

import pytest

from toolace_r.config import load_config
from toolace_r.errors import ConfigError
from toolace_r.plan import estimate as est
from toolace_r.plan.report import GIB, check_before_run, judge
from toolace_r.plan.shapes import KNOWN_CONFIGS, model_shape

REPO = Path(__file__).resolve().parents[1]
JOB_8B = REPO / "jobs" / "llama31_8b.yaml"
DEMO = REPO / "jobs" / "demo.yaml"

# meta-llama/Llama-3.1-8B's public config.json (the shape numbers; no download)
LLAMA31_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 128256,
}


@pytest.fixture(scope="module")
def llama8b_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("llama31_8b") / "config.json"
    path.write_text(json.dumps(LLAMA31_8B_CONFIG))
    return path


@pytest.fixture(scope="module")
def shape8b(llama8b_config):
    return model_shape(load_config(JOB_8B), str(llama8b_config))


def test_8b_shape_from_config_json_is_the_public_count_and_the_builtin_table_agrees(shape8b):
    assert shape8b.n_params == 8_030_261_248  # Llama 3.1 8B's published parameter count
    assert shape8b.largest_layer == 128256 * 4096  # the embedding (= lm_head, untied)
    assert (shape8b.layers, shape8b.kv_heads, shape8b.head_dim, shape8b.vocab) == (32, 8, 128, 128256)
    builtin = model_shape(load_config(JOB_8B))  # model.path is a hub name: the built-in table
    assert "meta-llama/Llama-3.1-8B-Instruct" in KNOWN_CONFIGS
    assert builtin.n_params == shape8b.n_params and builtin.largest_layer == shape8b.largest_layer


def test_unknown_hub_name_is_an_error_naming_it_and_the_flag():
    cfg = load_config(JOB_8B, ["model.path=some-org/unknown-7b"])
    with pytest.raises(ConfigError, match=r"some-org/unknown-7b.*--model-config"):
        model_shape(cfg)


@pytest.mark.parametrize("zero,offload", [(2, False), (2, True), (3, False), (3, True)])
def test_model_states_match_deepspeeds_estimators(shape8b, zero, offload):
    """DeepSpeed's estimate_zero{2,3}_model_states_mem_needs (what its *_all_cold helpers print) for bf16 + Adam on
    2 nodes × 8 GPUs: our weights + gradients + optimizer states (+ the largest module gathered, under ZeRO-3) give
    the same GPU bytes, and the offloaded host bytes per node agree with its zero.Init figure without its 1.5 margin."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    cfg = load_config(JOB_8B, [f"train.zero_stage={zero}", f"train.offload_optimizer={offload}"])
    stage = est.train_stage(shape8b, cfg.train)
    parts = {p.name: p.bytes for p in stage.parts}
    states = parts["weights"] + parts["gradients"] + parts["optimizer states"]
    P = shape8b.n_params
    if zero == 2:
        cpu, gpu = estimate_zero2_model_states_mem_needs(P, 8, 2, cpu_offload=offload, additional_buffer_factor=1.5)
        assert states == pytest.approx(gpu, rel=1e-6)
        if offload:
            assert stage.host * 8 <= cpu  # DeepSpeed's also covers loading a full fp32 copy per process
    else:
        cpu, gpu, largest = estimate_zero3_model_states_mem_needs(P, shape8b.largest_layer, 8, 2, cpu_offload=offload,
                                                                 cpu_offload_params=False, zero_init=True)
        assert largest == 2 * 2 * shape8b.largest_layer  # bf16 params + grads of the largest module
        assert parts["DeepSpeed buffers"] >= largest
        assert states + largest == pytest.approx(gpu, rel=1e-6)
        if offload:
            assert stage.host * 8 * 1.5 == pytest.approx(cpu, rel=1e-6)


def test_8b_job_fits_80_gib_and_at_24_names_the_stages_and_fixes_that_fit(shape8b):
    cfg = load_config(JOB_8B)
    fits80 = judge(cfg, shape8b, 80 * GIB)
    assert {v.stage.name for v in fits80} == {"train", "probe", "eval", "serve"}
    assert all(v.fits for v in fits80), [(v.stage.name, v.need / GIB) for v in fits80]
    train = next(v for v in fits80 if v.stage.name == "train")
    acts = next(p for p in train.stage.parts if p.name == "activations")
    without = est.activation_bytes(shape8b, cfg.train, "bf16", checkpointing=False)
    assert without > 80 * GIB > 10 * acts.bytes  # what the 8B job needs gradient checkpointing for

    at24 = judge(cfg, shape8b, 24 * GIB)
    bad = {v.stage.name: v for v in at24 if v.fits is False}
    assert "train" in bad
    micro = next(f for f in bad["train"].fixes if f.startswith("train.tokens_per_micro_batch="))
    tokens = int(micro.split("=")[1].split()[0])  # the suggested micro-batch really fits 24 GiB
    smaller = est.with_train(cfg.train, tokens_per_micro_batch=tokens, max_length=min(cfg.train.max_length, tokens))
    from toolace_r.plan.report import need

    assert need(est.train_stage(shape8b, smaller)) <= 24 * GIB < need(est.train_stage(shape8b, cfg.train))


def test_plan_command_prints_every_stage_and_exit_code_says_whether_it_fits(llama8b_config, capsys):
    from toolace_r.cli import main

    assert main(["plan", "--config", str(JOB_8B), "--gpu-memory", "80", "--model-config", str(llama8b_config)]) == 0
    out = capsys.readouterr().out
    for stage in ("train", "probe", "eval", "serve"):
        assert f"\n{stage}  (" in out
    assert "the job fits" in out and "KV budget" in out and "batch_size=" not in out.split("probe  (")[1].split("\n")[0]
    assert main(["plan", "--config", str(JOB_8B), "--gpu-memory", "24"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_engine_budget_in_tokens_is_the_engines_own_arithmetic(shape8b):
    """engine.kv_cache_gb → tokens as toolace_r.engine.default_kv_cache_tokens counts them (bf16 8B on the meta
    device: no memory), and rows of prompt + max_new_tokens in whole requests of k, as the engine admits them."""
    import torch
    from transformers import AutoModelForCausalLM

    from toolace_r.engine import default_kv_cache_tokens
    from toolace_r.plan.shapes import hf_config

    cfg = load_config(JOB_8B, ["engine.kv_cache_gb=10"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(cfg)[0]).to(torch.bfloat16)
    probe = est.probe_stage(shape8b, cfg, 4096, 80 * GIB)
    eng = probe.engine
    assert eng.budget == 10 * GIB and eng.budget_tokens == default_kv_cache_tokens(model, 10.0)
    assert eng.reserve == 4096 + cfg.probe.generation.max_new_tokens and eng.copies == cfg.probe.k
    assert eng.memory_rows == eng.budget_tokens // (eng.copies * eng.reserve) * eng.copies
    assert eng.rows == eng.memory_rows  # fewer than the 64 samples × k a Ray Data batch submits
    kv = next(p for p in probe.parts if p.name == "KV cache")
    assert kv.bytes == eng.rows * eng.reserve * est.kv_bytes_per_token(shape8b, 2) <= eng.budget


def test_gpu_default_budget_is_the_engines_share_of_free_and_a_pass_does_not_grow_with_the_batch(shape8b):
    """kv_cache_gb=0 on an 80 GiB GPU: the budget is the engine's KV_FREE_SHARE (40 %) of what the weights and the
    runtime leave, the stage fits
    by construction, and the prefill pass is PREFILL_TOKENS tokens whether the Ray Data batch is 4 or 512 samples."""
    from toolace_r.engine.core import KV_FREE_SHARE, PREFILL_TOKENS
    from toolace_r.plan.report import RUNTIME_GPU, need

    cfg = load_config(JOB_8B)
    assert cfg.engine.kv_cache_gb == 0
    weights = shape8b.n_params * 2
    small = est.probe_stage(shape8b, load_config(JOB_8B, ["probe.batch_size=4"]), 4096, 80 * GIB)
    large = est.probe_stage(shape8b, load_config(JOB_8B, ["probe.batch_size=512"]), 4096, 80 * GIB)
    assert KV_FREE_SHARE == 0.4
    assert large.engine.budget == pytest.approx(KV_FREE_SHARE * (80 * GIB - weights - RUNTIME_GPU))
    assert large.engine.rows == large.engine.memory_rows < 512 * 8  # the memory, not the batch, sets the rows
    assert small.engine.rows == 4 * 8 < large.engine.rows
    pre = {s: next(p.bytes for p in st.parts if p.name == "prefill pass") for s, st in (("s", small), ("l", large))}
    assert pre["s"] == pre["l"] and "PREFILL_TOKENS=" in next(p.note for p in large.parts if p.name == "prefill pass")
    assert PREFILL_TOKENS * est.pass_token_bytes(shape8b, 2) <= pre["l"]
    assert need(large) <= 80 * GIB
    assert f"admits {large.engine.memory_rows} rows of 4,352 tokens" in " ".join(large.notes)


def test_an_oversized_kv_budget_names_an_engine_kv_cache_gb_that_fits_not_a_batch_size(shape8b):
    from toolace_r.plan.report import need

    cfg = load_config(JOB_8B, ["engine.kv_cache_gb=20"])
    bad = {v.stage.name: v for v in judge(cfg, shape8b, 24 * GIB) if v.fits is False}
    assert {"probe", "eval", "serve"} <= set(bad)
    for name in ("probe", "eval", "serve"):
        fixes = bad[name].fixes
        assert not any("batch_size" in f for f in fixes), fixes
        fix = next(f for f in fixes if f.startswith("engine.kv_cache_gb="))
        gb = float(fix.split("=")[1].split(":")[0])
        build = {"probe": est.probe_stage, "eval": est.eval_stage, "serve": est.serve_stage}[name]
        fixed = build(shape8b, est.with_kv(cfg, gb), 4096, 24 * GIB)
        assert need(fixed) <= 24 * GIB < need(build(shape8b, est.with_kv(cfg, gb + 0.2), 4096, 24 * GIB))
        assert fixed.engine.rows >= fixed.engine.copies


def test_cpu_default_budget_is_two_gib():
    from toolace_r.engine.core import DEFAULT_KV_CACHE_GB

    cfg = load_config(DEMO)
    stage = est.eval_stage(model_shape(cfg), cfg, 512)
    assert not stage.on_gpu and stage.engine.budget == DEFAULT_KV_CACHE_GB * GIB


def test_plan_rows_are_the_rows_the_engine_admits(tmp_path):
    """A tiny fp32 Llama on CPU and a budget of 5.5 requests of k=4 rows × (20 + 8) tokens: the plan's rows equal
    the rows the real engine starts on its first step."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from toolace_r.engine import Engine, Request, Sampling, default_kv_cache_tokens

    hf = LlamaConfig(vocab_size=48, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, eos_token_id=[1, 2, 3], pad_token_id=0)
    (tmp_path / "config.json").write_text(hf.to_json_string())
    k, prompt, new = 4, 20, 8
    kv = 2 * 2 * 2 * 16 * 4
    gb = 5.5 * k * (prompt + new) * kv / GIB
    cfg = load_config(DEMO, [f"engine.kv_cache_gb={gb}", f"probe.k={k}", f"probe.generation.max_new_tokens={new}",
                             "probe.gpus_per_actor=0", "probe.generation.temperature=0.7", "model.dtype=float32"])
    plan = est.probe_stage(model_shape(cfg, str(tmp_path / "config.json")), cfg, prompt).engine
    torch.manual_seed(0)
    model = LlamaForCausalLM(hf).eval()
    engine = Engine(model, Namespace(eos_token_id=1, pad_token_id=0), kv_cache_tokens=default_kv_cache_tokens(model, gb))
    assert engine.kv_cache_tokens == plan.budget_tokens
    requests = [Request(prompt=list(range(4, 4 + prompt)), sampling=Sampling(temperature=0.7, max_new_tokens=new,
                                                                               seed=i), n=k) for i in range(10)]
    for r in requests:
        engine.submit(r)
    with torch.no_grad():
        engine.step()
    assert sum(r.started for r in requests) == plan.memory_rows == plan.rows == 5 * k


def test_run_refuses_a_job_that_cannot_fit_naming_the_stage(capsys):
    from toolace_r.cli import main

    assert main(["run", "--config", str(JOB_8B), "--gpu-memory", "24"]) == 2
    err = capsys.readouterr().err
    assert "cannot fit" in err and "train needs" in err and "--no-memory-check" in err


def test_demo_job_passes_its_own_check_on_cpu():
    check_before_run(load_config(DEMO), Namespace(gpu_memory=None, model_config=None, no_memory_check=False))


class LiveTensorBytes:
    """Peak bytes of live tensor storages, as a TorchDispatchMode sees every op's outputs; a storage counts from its
    first appearance until it is freed (a weakref callback). Storages that exist before (the weights) are
    registered with `hold`."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self
        self.live: dict[int, int] = {}
        self.now = self.peak = 0
        self._refs: list = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                import torch.utils._pytree as pytree

                for t in pytree.tree_leaves(out):
                    outer.hold(t)
                return out

        self.mode = Mode()

    def hold(self, t) -> None:
        import torch

        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        st = t.untyped_storage()
        key = st._cdata
        if key in self.live:
            return
        self.live[key] = st.nbytes()
        self.now += st.nbytes()
        self.peak = max(self.peak, self.now)
        self._refs.append(weakref.ref(st, lambda _, k=key: self._free(k)))

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)


@pytest.mark.parametrize("overrides", [[], ["train.gradient_checkpointing=true"], ["train.precision=fp32"]],
                         ids=["demo", "checkpointing", "fp32"])
def test_training_estimate_is_within_25_percent_of_the_measured_peak_of_the_demo_model(overrides):
    """One process, the demo's model shape, precision (amp_bf16) and micro-batch (1 024 tokens: two rows padded to
    512), the worker's AdamW groups: the peak of live tensor bytes over a step after a warm-up step (so Adam's
    states exist), against the plan's train stage for the same setting (one worker, no ZeRO sharding). Also with
    gradient checkpointing (the worker's enable_gradient_checkpointing) and in plain fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    from toolace_r.plan.shapes import hf_config
    from toolace_r.train.optim import _param_groups, autocast_context, enable_gradient_checkpointing
    from toolace_r.train.rows import IGNORE_INDEX, collate

    cfg = load_config(DEMO, ["train.num_workers=1", "train.zero_stage=0"] + overrides)
    tcfg = cfg.train
    shape = model_shape(cfg)
    hf, _ = hf_config(cfg)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf)
    model.config.use_cache = False
    if tcfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    optimizer = torch.optim.AdamW(_param_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=tuple(tcfg.betas))
    g = torch.Generator().manual_seed(0)
    examples = []
    for n in (tcfg.tokens_per_micro_batch // 2, tcfg.tokens_per_micro_batch // 2 - 64):
        ids = torch.randint(10, shape.vocab, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (n // 2) + ids[n // 2:]})
    batch = collate(examples, pad_id=0)
    assert batch["input_ids"].numel() == tcfg.tokens_per_micro_batch  # the configured budget, padding included

    tracker = LiveTensorBytes()
    for t in list(model.parameters()) + list(model.buffers()):
        tracker.hold(t)
    with tracker.mode:
        for step in range(2):
            if step == 1:
                tracker.peak = tracker.now  # measure the second step only: optimizer states exist, as in training
            with autocast_context(tcfg, "cpu"):
                loss = model(**batch, use_cache=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            del loss
    measured = tracker.peak
    estimate = est.train_stage(shape, tcfg).peak
    ratio = estimate / measured
    print(f"demo model, one worker, {overrides or 'as configured'}: estimate {estimate / 2**20:.1f} MiB, measured peak {measured / 2**20:.1f} MiB, "
          f"ratio {ratio:.3f}")
    assert 0.75 <= ratio <= 1.25
