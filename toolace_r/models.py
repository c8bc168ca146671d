"""Load a model + tokenizer from a path or hub name, and build tiny local ones (no hub access, ever, for those).

`load_model` is the real loading code users point at Llama/Qwen checkpoints: a path that is not a local directory
is handed to `from_pretrained` unchanged. `build_tiny_model` makes a small Llama-architecture model with a byte-level
BPE tokenizer trained locally on the pool text, saved as a plain HF directory; tests and the demo use it.
A Llama config rather than Qwen2: transformers maps Qwen2 to a tokenizer class that adds its own pre-tokenisation in
front of a locally trained tokenizer (STACK.md).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch

from toolace_r.config import TinyModelConfig

if TYPE_CHECKING:
    from toolace_r.config import Config

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]
PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|end|>"

# A minimal chat template: each turn is `<|role|>content<|end|>`; the generation prompt opens an assistant turn.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + (message['content'] or '') + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

META_FILE = "toolace_r.json"  # prompt style etc. travel with a model dir so eval/serve render prompts identically


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pick_dtype(dtype: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU unless asked otherwise."""
    device = device or pick_device()
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def resolve_model_path(path: str) -> str:
    """A model dir given as an object-store URI (s3://, gs://) is downloaded once per node and loaded from the local
    copy; `file://` becomes a path; anything else (a local dir or a hub name) is returned unchanged."""
    from toolace_r import storage

    if storage.scheme(path):
        return storage.localize(path)
    return path


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(path)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tok.padding_side = "left"  # decoder-only batched generation pads on the left
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: str = "auto", device: str | torch.device | None = None, trust_remote_code: bool = False):
    """(model, tokenizer) from a local HF dir or a hub name, in eval mode on `device` (default: GPU if present)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(path)
    device = torch.device(device) if device is not None else pick_device()
    torch_dtype = pick_dtype(dtype, device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    model.to(device).eval()
    return model, load_tokenizer(path, trust_remote_code)


def read_meta(path: str) -> dict[str, Any]:
    meta = Path(path) / META_FILE
    return json.loads(meta.read_text()) if meta.is_file() else {}


def write_meta(path: str | Path, **meta: Any) -> None:
    target = Path(path) / META_FILE
    current = json.loads(target.read_text()) if target.is_file() else {}
    current.update(meta)
    target.write_text(json.dumps(current, indent=2))


def model_meta(model_path: str) -> dict:
    """The model's toolace_r.json (how it was trained to be prompted), {} when it has none. A model dir in object
    storage (a remote run dir's) has its toolace_r.json read from there, not the whole dir downloaded."""
    from toolace_r import storage

    if storage.scheme(model_path):
        text = storage.read_text(storage.join(model_path, META_FILE))
        return json.loads(text) if text else {}
    return read_meta(model_path) if Path(model_path).is_dir() else {}


def prompt_style_for(cfg: Config, model_path: str) -> str:
    """The style the model was trained with (its toolace_r.json), else the configured one."""
    return model_meta(model_path).get("prompt_style", cfg.model.prompt_style)


def keep_answer_for(cfg: Config, model_path: str) -> str:
    """How the model was trained to keep a right answer in a refinement round (its toolace_r.json), else the
    configured `refine.keep_answer`."""
    return model_meta(model_path).get("keep_answer", cfg.refine.keep_answer)


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """Byte-level BPE trained on `texts`, all 256 bytes in the base alphabet (any input encodes), chat specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",  # must be passed here: set later, it is not saved
        chat_template=TINY_CHAT_TEMPLATE,
    )


def build_tiny_model(out_dir: str | Path, texts: Iterable[str], cfg: TinyModelConfig | None = None, prompt_style: str = "compact") -> Path:
    """Tokenizer trained on `texts` + randomly initialised Llama model, saved as a plain HF dir at `out_dir`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = cfg or TinyModelConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tiny_tokenizer(texts, cfg.vocab_size)
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    write_meta(out, prompt_style=prompt_style)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("tiny model: %d params, vocab %d -> %s", n_params, len(tok), out)
    return out


def tiny_model_command(args, cfg) -> int:
    """`toolace-r tiny-model --out DIR [--config FILE] [model.tiny.hidden_size=...]`: tokenizer trained on the pool."""
    from toolace_r.data.pool import load_pool, pool_texts

    samples = load_pool(cfg.pool)
    out = build_tiny_model(args.out, pool_texts(samples, cfg.model.prompt_style), cfg.model.tiny, cfg.model.prompt_style)
    print(f"tiny model written to {out}")
    return 0
