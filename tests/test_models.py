"""Tiny local models: built from pool text, plain HF dirs the Auto classes load; hub names pass through unchanged."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toolace_r.cli import main as cli_main
from toolace_r.config import TinyModelConfig
from toolace_r.data.prompts import chat_messages, prompt_text, render_answer
from toolace_r.models import META_FILE, build_tiny_model, load_model, read_meta, train_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]


def test_tiny_model_dir_loads_with_auto_classes(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tok) <= 512
    assert tok.padding_side == "left" and tok.pad_token and tok.eos_token and tok.chat_template
    assert read_meta(str(tiny_model_dir))["prompt_style"] == "compact"


def test_chat_template_and_byte_level_coverage(tiny_model_dir):
    from transformers import AutoTokenizer

    from toolace_r.data.pool import load_builtin
    from toolace_r.config import BuiltinPoolConfig

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    sample = load_builtin(BuiltinPoolConfig(n_train=1, n_heldout=1))[0][0]
    text = prompt_text(tok, chat_messages(sample.tools, sample.messages, "compact"))
    assert text.startswith(tok.bos_token) and text.endswith("<|assistant|>")
    assert sample.messages[-1]["content"] in text
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # lossless round trip through the chat specials
    odd = "Ünïcödé ✓ 数学 — emoji 🚀 tabs\tand\nnewlines"  # never seen in the pool: bytes still encode
    assert tok.decode(tok(odd, add_special_tokens=False)["input_ids"]) == odd
    answer = render_answer(sample.gold_calls())
    assert len(tok(answer, add_special_tokens=False)["input_ids"]) < len(answer)  # BPE merges learnt from the pool


def test_load_model_generates(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir), device="cpu")
    assert not model.training and next(model.parameters()).dtype == torch.float32
    batch = tok(["<|bos|><|user|>weather in Paris<|end|><|assistant|>", "<|bos|><|user|>hi<|end|><|assistant|>"],
                return_tensors="pt", padding=True, add_special_tokens=False)
    assert (batch["attention_mask"][1, 0] == 0).item()  # left padding
    out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[0] == 2 and out.shape[1] <= batch["input_ids"].shape[1] + 4


def test_build_is_deterministic(tmp_path):
    texts = ["[get_weather(city=\"Paris\")]", "Call the right functions", "None of the given functions"] * 20
    shape = TinyModelConfig(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    a = build_tiny_model(tmp_path / "a", texts, shape)
    b = build_tiny_model(tmp_path / "b", texts, shape)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((a / META_FILE).read_text()) == {"prompt_style": "compact"}


def test_tokenizer_alone_keeps_specials():
    tok = train_tiny_tokenizer(["hello world"] * 10, vocab_size=300)
    ids = tok("<|user|>hello<|end|>", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids[0]) == "<|user|>" and tok.convert_ids_to_tokens(ids[-1]) == "<|end|>"


def test_hub_name_is_passed_to_from_pretrained_unchanged(monkeypatch):
    """A path that is not a local dir is a hub name: handed to from_pretrained as is (offline here → HF OSError)."""
    import huggingface_hub.constants
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    seen = []
    real = AutoModelForCausalLM.from_pretrained

    def recording(name, *args, **kwargs):
        seen.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", recording)
    name = "toolace-r-tests/no-such-model"
    assert not Path(name).exists()
    with pytest.raises(OSError):
        load_model(name, device="cpu")
    assert seen == [name]


def test_cli_tiny_model_in_process(tmp_path, capsys):
    out = tmp_path / "tiny"
    code = cli_main(["tiny-model", "--out", str(out), "pool.builtin.n_train=200", "pool.builtin.n_heldout=10",
                     "model.tiny.vocab_size=400", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
                     "model.tiny.num_heads=2", "model.tiny.intermediate_size=64", "model.prompt_style=compact"])
    assert code == 0 and str(out) in capsys.readouterr().out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.hidden_size == 32 and len(AutoTokenizer.from_pretrained(out)) <= 400
    assert read_meta(str(out))["prompt_style"] == "compact"


def test_cli_tiny_model_bad_override_is_a_clear_error(tmp_path, capsys):
    code = cli_main(["tiny-model", "--out", str(tmp_path / "x"), "model.tiny.hidden=64"])
    assert code == 2 and "model.tiny.hidden" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_tiny_model_subprocess(tmp_path):
    """`toolace-r tiny-model --out DIR` end to end in a fresh process, then loaded by a second fresh process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "tiny"
    subprocess.run([sys.executable, "-m", "toolace_r.cli", "tiny-model", "--out", str(out),
                    "pool.builtin.n_train=300", "model.tiny.vocab_size=512", "model.tiny.hidden_size=64",
                    "model.tiny.num_layers=2"], check=True, env=env, cwd=tmp_path, timeout=600)
    code = ("from transformers import AutoModelForCausalLM, AutoTokenizer; import sys; "
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); t = AutoTokenizer.from_pretrained(sys.argv[1]); "
            "print(type(m).__name__, len(t))")
    res = subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.stdout.split()[0] == "LlamaForCausalLM" and int(res.stdout.split()[1]) <= 512
