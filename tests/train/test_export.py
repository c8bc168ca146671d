"""toolace_r.train.export: a LoRA run's export is merged into a plain HF model dir."""
from __future__ import annotations

import torch

from toolace_r.config import load_config
from toolace_r.models import META_FILE
from toolace_r.train import save_hf_model


def test_lora_export_is_merged_and_loads_without_peft(tiny_model_dir, tmp_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from toolace_r.train import _peft_config

    cfg = load_config(None, ["train.lora.enabled=true", "train.lora.r=4"])
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), _peft_config(cfg.train.lora))
    torch.manual_seed(0)
    with torch.no_grad():  # as if trained: LoRA B starts at zero, which would make the merge a no-op
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.eval()
    out = save_hf_model(peft_model.state_dict(), str(tiny_model_dir), tmp_path / "merged", lora=cfg.train.lora)
    assert not (out / "adapter_config.json").exists() and (out / META_FILE).exists()
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)
        assert not torch.allclose(base(input_ids=ids).logits, expected, atol=1e-3)




def _prompts(path, style):
    """Round-1 and refinement prompts our code renders for a dir (load_tokenizer: how probe/eval/serve load it)."""
    from toolace_r.config import BuiltinPoolConfig
    from toolace_r.data.pool import load_builtin
    from toolace_r.data.prompts import render_answer, render_prompt
    from toolace_r.models import load_tokenizer

    tok = load_tokenizer(str(path))
    samples, _ = load_builtin(BuiltinPoolConfig(n_train=40, n_heldout=5, seed=1))
    out = []
    for s in samples:
        out.append(render_prompt(tok, s.tools, s.messages, style))
        out.append(render_prompt(tok, s.tools, s.messages, style, previous_answer=render_answer(s.gold_calls())))
    return tok, samples, out


def test_export_carries_the_tool_template_and_renders_our_prompts_unchanged(tiny_model_dir, tmp_path):
    """The exported dir's template is the tool template of the base's recorded style; what our code renders (and
    its tokens) is the same as for the base dir; apply_chat_template with OpenAI tools gives the training prompt; an
    export of the export has the same template (wrapped once)."""
    from transformers import AutoModelForCausalLM

    from toolace_r.data.chat_template import HEAD_MARK, base_template
    from toolace_r.models import TINY_CHAT_TEMPLATE, read_meta

    style = read_meta(str(tiny_model_dir))["prompt_style"]
    module = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    out = save_hf_model(module.state_dict(), str(tiny_model_dir), tmp_path / "export", module=module,
                        prompt_style="toolace")  # the base's toolace_r.json wins, as in the worker's metadata
    base_tok, samples, expected = _prompts(tiny_model_dir, style)
    tok, _, got = _prompts(out, style)
    assert tok.chat_template.startswith(HEAD_MARK) and f"(prompt style {style})" in tok.chat_template
    assert base_template(tok.chat_template) == TINY_CHAT_TEMPLATE
    assert got == expected
    assert [tok(p, add_special_tokens=False)["input_ids"] for p in got] == [
        base_tok(p, add_special_tokens=False)["input_ids"] for p in expected]
    for s, prompt in zip(samples, expected[::2]):
        tools = [{"type": "function", "function": t} for t in s.tools]
        assert tok.apply_chat_template(s.messages, tools=tools, add_generation_prompt=True, tokenize=False) == prompt

    again = save_hf_model(module.state_dict(), str(out), tmp_path / "export2", module=module)
    assert load_tokenizer_template(again) == tok.chat_template


def load_tokenizer_template(path):
    from toolace_r.models import load_tokenizer

    return load_tokenizer(str(path)).chat_template
