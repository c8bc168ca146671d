"""The warm tiny base model (`model.path=tiny-base`): the part an instruct LLM plays in the paper, in miniature.

ToolACE-R's selection needs a model that already solves part of the pool (PAPER.md §1); a randomly initialised
model solves nothing, so every sample is "too hard" and pass rates carry no information. `tiny-base` is the demo's
stand-in for a downloaded instruct model: a tiny Llama pre-trained on the *general* tool-use corpus
(toolace_r.data.general_pool — other tools, domains and wording than the target pool), fresh samples only.

Where it comes from, in order:
1. the weights shipped in the package (`toolace_r/assets/tiny-base/`), when their recorded config hash equals the
   hash of the current config — the way a user downloads an instruct model instead of pre-training one;
2. the per-machine cache (`$TOOLACE_R_CACHE`, default `~/.cache/toolace-r/tiny-base-<hash>/`), keyed by the same
   hash, so reruns and every ablation arm start from the same weights;
3. otherwise it is built into that cache (`toolace-r base-model`), which takes minutes on a CPU.

The hash covers everything that determines the weights: the model shape (`model.tiny`), the pre-training recipe
(`model.base`), the prompt style and the corpus generator's version. Pre-training is a plain single-process torch
loop, not Ray Train: it is a one-off job outside the ToolACE-R loop, and on a 2-core box one process with two
threads is the fastest way to spend the CPU (STACK.md).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

from toolace_r.config import Config

log = logging.getLogger(__name__)

NAME = "tiny-base"
SHIPPED_DIR = Path(__file__).parent / "assets" / NAME
BUILD_FILE = "base_build.json"  # in the model dir: the config and hash it was built from, and its training log
CORPUS_VERSION = 4  # bump when general_pool's output changes for the same seeds


def base_spec(cfg: Config) -> dict[str, Any]:
    """Everything that determines the base model's weights."""
    return {"name": NAME, "corpus_version": CORPUS_VERSION, "prompt_style": cfg.model.prompt_style,
            "tiny": asdict(cfg.model.tiny), "base": asdict(cfg.model.base)}


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("TOOLACE_R_CACHE") or Path.home() / ".cache" / "toolace-r")


def recorded_hash(model_dir: Path) -> str | None:
    build = model_dir / BUILD_FILE
    return json.loads(build.read_text()).get("hash") if build.is_file() else None


def resolve_base_model(cfg: Config, build: bool = True) -> Path:
    """The directory of the tiny base model for `cfg`: shipped if its hash matches, else cached, else built."""
    digest = spec_hash(base_spec(cfg))
    if recorded_hash(SHIPPED_DIR) == digest:
        log.info("base model: shipped weights %s (config hash %s)", SHIPPED_DIR, digest)
        return SHIPPED_DIR
    cached = cache_root() / f"{NAME}-{digest}"
    if recorded_hash(cached) == digest:
        log.info("base model: cached %s", cached)
        return cached
    if not build:
        raise FileNotFoundError(f"no base model for config hash {digest} (shipped: {recorded_hash(SHIPPED_DIR)})")
    log.info("base model: building %s (config hash %s; shipped weights are for %s)", cached, digest,
             recorded_hash(SHIPPED_DIR))
    return build_base_model(cfg, cached)


# ------------------------------------------------------------------------------------------------ building
def corpus_samples(cfg: Config, seed_offset: int = 0) -> Iterator[Any]:
    """Endless general-corpus samples: made-up tools, and a `natural_fraction` share of natural requests for the
    catalogue's `natural_domains`, interleaved by a seeded coin."""
    from toolace_r.data.default_pool import natural_samples
    from toolace_r.data.general_pool import general_samples

    b = cfg.model.base
    made_up = general_samples(b.sample_seed + seed_offset)
    natural = natural_samples(b.sample_seed + seed_offset, list(b.natural_domains)) if b.natural_domains else None
    coin = random.Random(f"mix-{b.sample_seed + seed_offset}")
    while True:
        yield next(natural) if natural is not None and coin.random() < b.natural_fraction else next(made_up)


def corpus_rows(cfg: Config, seed_offset: int = 0) -> Iterator[dict[str, Any]]:
    """Endless training rows (chat + gold answer) of the general corpus."""
    from toolace_r.train import rows_from_samples

    for sample in corpus_samples(cfg, seed_offset):
        yield rows_from_samples([sample], cfg.model.prompt_style)[0]


def check_disjoint(cfg: Config) -> None:
    """The base's natural requests must come from other domains than the built-in target pool's."""
    from toolace_r.data.default_pool import DOMAINS
    from toolace_r.errors import ConfigError

    natural = set(cfg.model.base.natural_domains)
    if cfg.pool.path == "builtin" and natural:
        target = set(cfg.pool.builtin.domains or DOMAINS)
        if natural & target:
            raise ConfigError(f"model.base.natural_domains {sorted(natural & target)} are also in the target pool "
                              f"(pool.builtin.domains): the base would have seen the target's tools")


def _batches(rows: Iterator[dict], tokenizer: Any, tokens_per_step: int, max_length: int, seed: int) -> Iterator[list[dict]]:
    """Length-grouped batches of encoded rows: 64 steps' worth of rows at a time, sorted by length, cut at the token
    budget (rows × longest), batch order shuffled."""
    from toolace_r.train import encode_row

    rng = random.Random(seed)
    while True:
        pool: list[dict] = []
        pooled_tokens = 0
        while pooled_tokens < 64 * tokens_per_step:
            row = next(rows)
            encoded = encode_row(tokenizer, row["chat"], row["completion"], max_length)
            if encoded is not None:
                pool.append(encoded)
                pooled_tokens += len(encoded["input_ids"])
        pool.sort(key=lambda e: len(e["input_ids"]))
        batches, current = [], []
        for e in pool:
            if current and len(e["input_ids"]) * (len(current) + 1) > tokens_per_step:
                batches.append(current)
                current = []
            current.append(e)
        batches.append(current)
        rng.shuffle(batches)
        yield from batches


def pretrain(model: Any, tokenizer: Any, cfg: Config, on_eval: Callable[[int, int], dict] | None = None,
             eval_every: int = 0) -> list[dict]:
    """Train `model` in place on fresh general-corpus rows for `model.base.train_tokens` tokens. Returns the log
    (loss per 50 steps; `on_eval(step, tokens)`'s figures every `eval_every` steps)."""
    import torch
    from tqdm import tqdm

    from toolace_r.train import _param_groups, collate

    b = cfg.model.base
    torch.manual_seed(b.seed)
    opt = torch.optim.AdamW(_param_groups(model, b.weight_decay), lr=b.lr, betas=(0.9, 0.95))
    total_steps = max(1, b.train_tokens // b.tokens_per_step)

    def lr_at(step: int) -> float:
        if step < b.warmup_steps:
            return b.lr * (step + 1) / b.warmup_steps
        progress = (step - b.warmup_steps) / max(1, total_steps - b.warmup_steps)
        return b.lr * (b.min_lr_ratio + (1 - b.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    history: list[dict] = []
    tokens, step, losses, started = 0, 0, [], time.time()
    batches = _batches(corpus_rows(cfg), tokenizer, b.tokens_per_step, b.max_length, b.seed)
    model.train()
    bar = tqdm(total=b.train_tokens, unit="tok", unit_scale=True, desc="base model", mininterval=5)
    while tokens < b.train_tokens:
        batch = collate(next(batches), tokenizer.pad_token_id)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=b.bf16_autocast and not torch.cuda.is_available()):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        n = int(batch["attention_mask"].sum())
        tokens += n
        step += 1
        losses.append(float(out.loss.detach()))
        bar.update(n)
        if step % 50 == 0:
            history.append({"step": step, "tokens": tokens, "loss": sum(losses) / len(losses),
                            "elapsed_s": time.time() - started, "tokens_per_s": tokens / (time.time() - started)})
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
            losses = []
        if on_eval is not None and eval_every and step % eval_every == 0:
            model.eval()
            history.append({"step": step, "tokens": tokens, "elapsed_s": time.time() - started, **on_eval(step, tokens)})
            model.train()
    bar.close()
    model.eval()
    history.append({"step": step, "tokens": tokens, "elapsed_s": time.time() - started,
                    "tokens_per_s": tokens / (time.time() - started), "final": True})
    return history


def build_base_model(cfg: Config, out: Path, on_eval: Callable | None = None, eval_every: int = 0) -> Path:
    """Tokenizer on general-corpus text, random init, pre-training; saved as a plain HF dir with its build record.
    Written to a temporary sibling and renamed, so a killed build never leaves a dir that looks finished."""
    import itertools

    import torch
    from transformers import AutoModelForCausalLM

    from toolace_r.data.pool import pool_texts
    from toolace_r.models import build_tiny_model, load_tokenizer

    spec = base_spec(cfg)
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.set_num_threads(max(1, cfg.model.base.threads))
    texts_from = list(itertools.islice(corpus_samples(cfg, 10_000), cfg.model.base.tokenizer_samples))
    build_tiny_model(tmp, pool_texts(texts_from, cfg.model.prompt_style), cfg.model.tiny, cfg.model.prompt_style)
    model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    tokenizer = load_tokenizer(str(tmp))
    history = pretrain(model, tokenizer, cfg, on_eval, eval_every)
    model.save_pretrained(tmp)
    weights = hashlib.sha256((tmp / "model.safetensors").read_bytes()).hexdigest()
    (tmp / BUILD_FILE).write_text(json.dumps({"hash": spec_hash(spec), "spec": spec, "weights_sha256": weights,
                                              "history": history}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    log.info("base model written to %s", out)
    return out


def base_model_command(args, cfg: Config) -> int:
    """`toolace-r base-model [--config FILE] [--out DIR] [--rebuild] [model.base.*=...]`: print (and copy) the base
    model dir for this config, building it first when neither the shipped nor a cached copy matches. The --out copy
    carries the tool chat template (toolace_r.data.chat_template), so it can be served by vLLM as it is."""
    if args.rebuild:
        path = build_base_model(cfg, cache_root() / f"{NAME}-{spec_hash(base_spec(cfg))}")
    else:
        path = resolve_base_model(cfg)
    if args.out:
        from toolace_r.train.export import write_tool_template

        shutil.rmtree(args.out, ignore_errors=True)
        shutil.copytree(path, args.out)
        # the copy is an export: it gets the tool chat template that vLLM/SGLang need (the shipped dir stays as is)
        path = write_tool_template(args.out, cfg.model.prompt_style)
    print(f"base model ({spec_hash(base_spec(cfg))}): {path}")
    return 0
