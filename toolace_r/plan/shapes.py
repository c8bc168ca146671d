"""The model's shape, from its config.json alone: no weights are read or downloaded.

Why a shape and not a model: `toolace-r plan` runs before anything launches, usually on a machine that has neither
the weights nor a GPU. The config's numbers (hidden size, layers, heads, kv heads, vocab, intermediate size) decide
every memory figure; the parameter count and the largest module (what ZeRO-3 gathers at once) come from
instantiating the architecture on the meta device, so any architecture transformers knows is counted exactly,
biases and tied embeddings included.

Where the config.json comes from, in order: `--model-config PATH`; the tiny models this project builds
(`model.path=tiny` from `model.tiny`, `tiny-base` from its shipped or cached directory); a local model directory; the
built-in table `KNOWN_CONFIGS` for the hub names the jobs under jobs/ reference (there is no internet to fetch one).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolace_r.config import Config
from toolace_r.errors import ConfigError

# Public config.json numbers of the hub models jobs/ names (jobs/llama31_8b.yaml). Llama 3.1 8B and its Instruct
# variant share the shape; only the shape matters here.
_LLAMA31_8B = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "attention_bias": False, "mlp_bias": False, "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128009,
}
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA31_8B,
    "meta-llama/Llama-3.1-8B": _LLAMA31_8B,
}


@dataclass(frozen=True)
class ModelShape:
    """What the memory formulas need to know about a model."""
    source: str  # where the config came from, for the report
    n_params: int  # every parameter once (tied embeddings counted once)
    largest_layer: int  # parameters of the largest single module (its own, not its children's): ZeRO-3's unit
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int
    max_positions: int
    lora_params: int  # trainable parameters with train.lora.enabled (its r and target_modules), on or off

    @property
    def kv_width(self) -> int:
        """Key (= value) channels per token and layer."""
        return self.kv_heads * self.head_dim


def _config_from_dict(data: dict[str, Any], source: str):
    from transformers import AutoConfig

    data = dict(data)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ConfigError(f"{source}: no 'model_type' in the model config")
    try:
        return AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError) as err:
        raise ConfigError(f"{source}: not a model config transformers knows: {err}") from None


def _read_config_file(path: Path, source: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{source}: cannot read {path}: {err}") from None


def _tiny_config(cfg: Config):
    """The config `models.build_tiny_model` writes for `model.tiny` (its vocab is the tokenizer's, which BPE
    training fills to `vocab_size`)."""
    from transformers import LlamaConfig

    t = cfg.model.tiny
    return LlamaConfig(vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                       num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_heads,
                       max_position_embeddings=t.max_position_embeddings, tie_word_embeddings=True)


def hf_config(cfg: Config, model_config: str | None = None, model_path: str | None = None):
    """(transformers config, where it came from) for `model_path` (default model.path); ConfigError naming the
    model when no config.json can be found without a download."""
    path = model_path or cfg.model.path
    if model_config:
        file = Path(model_config)
        file = file / "config.json" if file.is_dir() else file
        if not file.is_file():
            raise ConfigError(f"--model-config {model_config}: no such file")
        return _config_from_dict(_read_config_file(file, str(file)), str(file)), str(file)
    if path == "tiny":
        return _tiny_config(cfg), "model.tiny"
    if path == "tiny-base":
        from toolace_r.base_model import resolve_base_model

        try:
            directory = resolve_base_model(cfg, build=False)
        except FileNotFoundError:  # not built yet for this config: it will have model.tiny's shape
            return _tiny_config(cfg), "model.tiny (tiny-base is built with this shape)"
        file = Path(directory) / "config.json"
        return _config_from_dict(_read_config_file(file, str(file)), str(file)), str(file)
    local = Path(path) / "config.json"
    if local.is_file():
        return _config_from_dict(_read_config_file(local, str(local)), str(local)), str(local)
    if path in KNOWN_CONFIGS:
        return _config_from_dict(KNOWN_CONFIGS[path], path), f"built-in shape of {path}"
    raise ConfigError(f"model.path={path!r}: no local config.json and not one of the built-in shapes "
                      f"({', '.join(KNOWN_CONFIGS)}); pass --model-config PATH (the model's config.json)")


def model_shape(cfg: Config, model_config: str | None = None, model_path: str | None = None) -> ModelShape:
    """Instantiate the architecture on the meta device (no memory, no weights) and read off its shape."""
    import torch
    from transformers import AutoModelForCausalLM

    hf, source = hf_config(cfg, model_config, model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    n_params = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    text = hf.get_text_config() if hasattr(hf, "get_text_config") else hf
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return ModelShape(
        source=source, n_params=n_params, largest_layer=largest, hidden=text.hidden_size,
        layers=text.num_hidden_layers, heads=heads, kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim, vocab=text.vocab_size, intermediate=text.intermediate_size,
        max_positions=getattr(text, "max_position_embeddings", 0) or 0,
        lora_params=lora_params(model, cfg))


def lora_params(model: Any, cfg: Config) -> int:
    """Adapter parameters peft adds: r × (in + out) for every Linear whose name ends in a train.lora target."""
    import torch

    targets = set(cfg.train.lora.target_modules)
    r = cfg.train.lora.r
    return sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets)
