"""The end of a run: the trained weights as a plain Hugging Face model dir (ZeRO-3 weights gathered, LoRA merged).

The export is what the rest of the loop reads (probe, eval, serve and the next iteration's training all load a model
dir with the Auto classes: ARCHITECTURE.md's contract), so it needs neither DeepSpeed nor peft to load. Its tokenizer
carries the tool chat template (toolace_r.data.chat_template) of the prompt style it was trained with, so that vLLM or
SGLang serving the dir with `--tool-call-parser pythonic` prompt it exactly as training did.
"""
from __future__ import annotations

import shutil
from pathlib import Path


def gather_state_dict(engine, zero_stage: int) -> dict | None:
    """The full model state dict on rank 0 (None elsewhere). Under ZeRO-3 every rank must call this: the
    partitioned parameters are gathered layer by layer."""
    import torch.distributed as dist

    if zero_stage == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    if dist.get_rank() == 0:
        return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}
    return None


def save_hf_model(state_dict: dict, base_path: str, out_dir: str | Path, lora=None, module=None, dtype=None,
                  prompt_style: str | None = None) -> Path:
    """Write `state_dict` as a plain HF model dir + the base model's tokenizer and toolace_r.json.

    The tokenizer's chat template becomes the tool chat template for the model's prompt style: the base dir's
    toolace_r.json style (what the worker records for the export too), else `prompt_style`.

    With LoRA the state dict is the peft model's: it is loaded into a fresh peft wrapper of the base model and merged,
    so the export needs no peft to load. Without LoRA, `module.save_pretrained(state_dict=...)` writes it (the module
    only supplies the config and tied-weight layout, its own — possibly partitioned — tensors are not read).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolace_r.models import META_FILE, read_meta

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
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    _set_tool_template(tokenizer, read_meta(base_path).get("prompt_style") or prompt_style)
    tokenizer.save_pretrained(out)
    meta = Path(base_path) / META_FILE
    if meta.is_file():
        shutil.copy(meta, out / META_FILE)
    return out


def _set_tool_template(tokenizer, style: str | None) -> None:
    """Wrap the tokenizer's chat template for `style` (a base without a template, or no known style: left as is —
    the project's own prompts need the base template anyway, and a guessed style would mislead a serving engine)."""
    from toolace_r.data.chat_template import tool_chat_template

    if style and isinstance(tokenizer.chat_template, str):
        tokenizer.chat_template = tool_chat_template(tokenizer.chat_template, style)


def write_tool_template(model_dir: str | Path, style: str | None = None) -> Path:
    """Give an existing model dir (a copy of the base model, an older export) the tool chat template of its
    toolace_r.json style (else `style`), re-saving only its tokenizer files."""
    from transformers import AutoTokenizer

    from toolace_r.models import read_meta

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    _set_tool_template(tokenizer, read_meta(str(model_dir)).get("prompt_style") or style)
    tokenizer.save_pretrained(str(model_dir))
    return Path(model_dir)


def _peft_config(lora):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), task_type="CAUSAL_LM")

