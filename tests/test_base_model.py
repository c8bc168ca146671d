"""The warm tiny base model: shipped weights match their config, a cached build is reused, a changed config rebuilds."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from toolace_r import base_model
from toolace_r.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model.tiny.hidden_size=16", "model.tiny.num_layers=1", "model.tiny.num_heads=2",
         "model.tiny.intermediate_size=32", "model.tiny.vocab_size=300", "model.base.train_tokens=3000",
         "model.base.tokens_per_step=600", "model.base.tokenizer_samples=50", "model.base.warmup_steps=2",
         "model.prompt_style=signature"]


def test_the_demo_config_resolves_to_the_shipped_weights_and_they_are_intact():
    cfg = load_config(ROOT / "jobs" / "demo.yaml")
    assert cfg.model.path == "tiny-base"
    build = json.loads((base_model.SHIPPED_DIR / base_model.BUILD_FILE).read_text())
    assert build["hash"] == base_model.spec_hash(base_model.base_spec(cfg)), (
        "jobs/demo.yaml no longer matches the shipped tiny-base weights: rebuild them with "
        "benchmarks/base_model_curve.py --keep toolace_r/assets/tiny-base (or revert the model.tiny / model.base change)")
    weights = (base_model.SHIPPED_DIR / "model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == build["weights_sha256"]
    assert base_model.resolve_base_model(cfg, build=False) == base_model.SHIPPED_DIR
    assert (base_model.SHIPPED_DIR / "model.safetensors").stat().st_size <= 20 * 2**20


def test_a_cached_build_is_reused_and_a_changed_config_rebuilds(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLACE_R_CACHE", str(tmp_path))
    cfg = load_config(None, SMALL)
    first = base_model.resolve_base_model(cfg)
    assert first.parent == tmp_path and (first / "model.safetensors").is_file()
    assert base_model.recorded_hash(first) == base_model.spec_hash(base_model.base_spec(cfg))
    stamp = (first / "model.safetensors").stat().st_mtime_ns

    t0 = time.perf_counter()
    again = base_model.resolve_base_model(cfg)
    assert time.perf_counter() - t0 < 5.0
    assert again == first and (first / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt

    changed = load_config(None, SMALL + ["model.base.lr=0.001"])
    other = base_model.resolve_base_model(changed)
    assert other != first and base_model.recorded_hash(other) == base_model.spec_hash(base_model.base_spec(changed))
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # the first build is kept for its own config


def test_build_false_refuses_instead_of_building(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLACE_R_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no base model for config hash"):
        base_model.resolve_base_model(load_config(None, SMALL + ["model.base.seed=7"]), build=False)
    assert not list(tmp_path.iterdir())


def test_the_base_never_sees_the_target_pools_domains():
    from toolace_r.errors import ConfigError

    cfg = load_config(ROOT / "jobs" / "demo.yaml")
    base_model.check_disjoint(cfg)  # the demo: natural requests of 5 domains, target pool of the other 7
    assert set(cfg.model.base.natural_domains).isdisjoint(cfg.pool.builtin.domains)
    with pytest.raises(ConfigError, match="also in the target pool"):
        base_model.check_disjoint(load_config(ROOT / "jobs" / "demo.yaml", ["pool.builtin.domains=[shop,weather]"]))
    with pytest.raises(ConfigError, match="also in the target pool"):  # empty = every domain
        base_model.check_disjoint(load_config(ROOT / "jobs" / "demo.yaml", ["pool.builtin.domains=[]"]))


def test_base_model_out_copy_gets_the_tool_template_and_the_shipped_dir_is_untouched(tmp_path):
    """`toolace-r base-model --out DIR` is how a user gets tiny-base ready for vLLM: the copy's tokenizer carries the
    tool chat template of its style, renders our prompts as the shipped dir does, and the shipped files stay as
    they are."""
    import argparse

    from toolace_r.config import BuiltinPoolConfig
    from toolace_r.data.chat_template import HEAD_MARK
    from toolace_r.data.pool import load_builtin
    from toolace_r.data.prompts import render_prompt
    from toolace_r.models import load_tokenizer, read_meta

    cfg = load_config(ROOT / "jobs" / "demo.yaml")
    shipped = {p.name: p.read_bytes() for p in base_model.SHIPPED_DIR.iterdir() if p.is_file()}
    assert base_model.base_model_command(argparse.Namespace(out=str(tmp_path / "tb"), rebuild=False), cfg) == 0
    assert {p.name: p.read_bytes() for p in base_model.SHIPPED_DIR.iterdir() if p.is_file()} == shipped
    assert (tmp_path / "tb" / "model.safetensors").read_bytes() == shipped["model.safetensors"]
    style = read_meta(str(base_model.SHIPPED_DIR))["prompt_style"]
    copy, original = load_tokenizer(str(tmp_path / "tb")), load_tokenizer(str(base_model.SHIPPED_DIR))
    assert copy.chat_template.startswith(HEAD_MARK) and f"(prompt style {style})" in copy.chat_template
    samples, _ = load_builtin(BuiltinPoolConfig(n_train=30, n_heldout=5, seed=2))
    for s in samples:
        prompt = render_prompt(original, s.tools, s.messages, style)
        assert render_prompt(copy, s.tools, s.messages, style) == prompt
        tools = [{"type": "function", "function": t} for t in s.tools]
        served = copy.apply_chat_template(s.messages, tools=tools, add_generation_prompt=True, tokenize=True)
        served = served["input_ids"] if hasattr(served, "keys") else served
        assert list(served) == original(prompt, add_special_tokens=False)["input_ids"]
