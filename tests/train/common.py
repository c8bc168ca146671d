"""Rows shared by the training tests: 16 rows in the contract's shape, and the Ray Train runs' config."""
from __future__ import annotations

from toolace_r.config import load_config
from toolace_r.data.prompts import chat_messages, render_answer

TOOLS = [
    {"name": "get_weather", "description": "Current weather in a city",
     "parameters": {"type": "dict", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    {"name": "convert_currency", "description": "Convert an amount of dollars",
     "parameters": {"type": "dict", "properties": {"amount": {"type": "integer"}, "to": {"type": "string"}},
                    "required": ["amount", "to"]}},
]
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Perth"]


def fixed_rows() -> list[dict]:
    """16 training rows in the contract's shape, made with prompts.chat_messages (compact style, short prompts)."""
    rows = []
    for i, city in enumerate(CITIES):
        rows.append({"id": f"weather-{i}", "kind": "direct",
                     "chat": chat_messages(TOOLS, [{"role": "user", "content": f"Weather in {city}?"}], "compact"),
                     "completion": render_answer([{"name": "get_weather", "arguments": {"city": city}}])})
        rows.append({"id": f"convert-{i}", "kind": "direct",
                     "chat": chat_messages(TOOLS, [{"role": "user", "content": f"Convert {10 * (i + 1)} dollars to EUR"}], "compact"),
                     "completion": render_answer([{"name": "convert_currency", "arguments": {"amount": 10 * (i + 1), "to": "EUR"}}])})
    return rows


def ray_cfg(stage: int, **extra: str):
    """2 CPU workers, 40 epochs of the fixed rows (80 steps), a checkpoint every 10 steps, one failure allowed."""
    overrides = {"train.zero_stage": str(stage), "train.num_workers": "2", "train.cpus_per_worker": "1",
                 "train.epochs": "40", "train.tokens_per_micro_batch": "1024", "train.lr": "5e-3",
                 "train.warmup_steps": "5", "train.checkpoint_every": "10", "train.max_failures": "1",
                 "model.prompt_style": "compact", **extra}
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])
