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


