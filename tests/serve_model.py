"""A tiny model that really answers with tool calls, for the serving tests and benchmarks/serve_load.py.

A randomly initialised model never emits a call, so the server's tool-call path would go untested. This trains a
tiny Llama (toolace_r.models.build_tiny_model) with plain torch until it has memorised a handful of dialogues: the
round-1 prompt → the answer, and the refinement prompt (prompts.refine_messages with the answer as the previous one)
→ the same answer, so adaptive refinement stops after round 2. The result is an ordinary model dir: the server loads
it with models.load_model and generates with the real code path.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from toolace_r.config import TinyModelConfig
from toolace_r.data import prompts

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
OPENAI_TOOLS = [WEATHER_TOOL, TIME_TOOL]


def _project_tools(openai_tools: list[dict]) -> list[dict]:
    # Must equal toolace_r.serve.convert.convert_tools' output key for key (the prompt lists tools as JSON).
    return [{"name": t["function"]["name"], "description": t["function"].get("description") or "",
             "parameters": t["function"]["parameters"]} for t in openai_tools]


def _weather(city: str) -> dict:
    return {"name": "get_weather", "arguments": {"city": city}}


# (OpenAI tools, Sample-style messages, answer calls or None for a no-call answer)
EXAMPLES: list[tuple[list[dict], list[dict], list[dict] | None]] = [
    (OPENAI_TOOLS, [{"role": "user", "content": "What is the weather in Paris?"}], [_weather("Paris")]),
    (OPENAI_TOOLS, [{"role": "user", "content": "Weather in Oslo and Rome?"}], [_weather("Oslo"), _weather("Rome")]),
    (OPENAI_TOOLS, [{"role": "user", "content": "Tell me a joke."}], None),
    # the prompt a named tool_choice produces: tools restricted to that one
    ([WEATHER_TOOL], [{"role": "user", "content": "What is the weather in Paris?"}], [_weather("Paris")]),
    (OPENAI_TOOLS, [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [_weather("Paris")]},
        {"role": "tool", "content": json.dumps({"temp_c": 18})},
        {"role": "user", "content": "And in Lima?"},
    ], [_weather("Lima")]),
]


def training_pairs(style: str = "compact") -> list[tuple[list[dict], list[dict], str]]:
    """(chat for round 1, chat for a refinement round, answer text) per example."""
    out = []
    for tools, messages, calls in EXAMPLES:
        answer = prompts.render_answer(calls or [])
        ptools = _project_tools(tools)
        out.append((prompts.chat_messages(ptools, messages, style),
                    prompts.refine_messages(ptools, messages, answer, style), answer))
    return out


def _cache_key() -> str:
    import transformers

    source = Path(__file__).read_bytes() + Path(prompts.__file__).read_bytes()
    return hashlib.sha256(source + f"{torch.__version__}/{transformers.__version__}".encode()).hexdigest()[:16]


# Model shapes: "tiny" (~60 k parameters) for the tests and benchmarks/serve_load.py; "small" (~3.5 M) for
# `serve_load.py --model-size small`, where a forward pass costs more than the HTTP round trip around it (on a CPU its
# compute-bound prefill batches worse: benchmarks/RESULTS.md).
SHAPES = {
    "tiny": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
    "small": dict(vocab_size=512, hidden_size=256, num_layers=4, num_heads=8, intermediate_size=1024),
}


def calling_model(cache_root: str | Path | None = None, size: str = "tiny") -> Path:
    """The memorising model, trained once per (this file, prompts.py, torch, transformers, size) and kept under
    `cache_root` (default ~/.cache/toolace-r/test-models): training costs seconds (tiny) to a minute (small) on an
    idle 2-core machine, several times that on a busy one."""
    root = Path(cache_root or os.environ.get("TOOLACE_TEST_CACHE", Path.home() / ".cache" / "toolace-r" / "test-models"))
    target = root / f"calling-{_cache_key()}" if size == "tiny" else root / f"calling-{size}-{_cache_key()}"
    if (target / "done").is_file():
        return target
    tmp = Path(tempfile.mkdtemp(prefix="calling-", dir=root.mkdir(parents=True, exist_ok=True) or root))
    build_calling_model(tmp, size=size)
    (tmp / "done").write_text("ok")
    try:
        tmp.rename(target)
    except OSError:  # another process won the race: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_calling_model(out_dir: str | Path, max_steps: int = 400, seed: int = 0, size: str = "tiny") -> Path:
    """Train the memorising model into `out_dir` until its greedy answers are the examples' answers."""
    from toolace_r.models import build_tiny_model, load_model

    pairs = training_pairs("compact")
    texts = []
    for first, refine, answer in pairs:
        texts += [json.dumps(first), json.dumps(refine), answer]
    cfg = TinyModelConfig(**SHAPES[size], max_position_embeddings=1024, seed=seed)
    out = build_tiny_model(out_dir, texts, cfg, "compact")
    model, tok = load_model(str(out), dtype="float32", device="cpu")
    rows = []
    for first, refine, answer in pairs:
        target = tok(answer + tok.eos_token, add_special_tokens=False)["input_ids"]
        for chat in (first, refine):
            prompt = tok(prompts.prompt_text(tok, chat), add_special_tokens=False)["input_ids"]
            rows.append((prompt, target))
    width = max(len(p) + len(t) for p, t in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, t) in enumerate(rows):
        seq = p + t
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p): len(seq)] = torch.tensor(t)
        mask[i, : len(seq)] = 1
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2 if size == "tiny" else 2e-3)
    start, step = time.time(), 0
    while step < max_steps:
        model.train()
        for _ in range(20):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        if loss.item() < 0.02:
            model.eval()
            model.save_pretrained(out)
            if greedy_answers(out) == expected_answers():
                print(f"calling model: {step} steps, loss {loss.item():.4f}, {time.time() - start:.0f}s -> {out}")
                return Path(out)
    raise RuntimeError(f"the calling model did not memorise its {len(pairs)} examples in {max_steps} steps")


def greedy_answers(model_dir: str | Path) -> list[str]:
    """Greedy round-1 answers of the saved model for each example (to check it memorised them)."""
    from toolace_r.generation import Generator

    gen = Generator.from_path(str(model_dir), dtype="float32", device="cpu")
    texts = [prompts.prompt_text(gen.tokenizer, first) for first, _, _ in training_pairs("compact")]
    return [g[0].text for g in gen.generate(texts, max_new_tokens=48)]


def expected_answers() -> list[str]:
    return [answer for _, _, answer in training_pairs("compact")]


