"""Where samples come from: the training pool, evaluation sets, and text for training a tiny tokenizer.

`load_pool` is what the driver calls for the pool the loop probes and selects from; `load_eval_spec` turns an eval
spec (`builtin`, `bfcl:DIR`, `apibank:FILE_OR_DIR`, `acebench:DIR`, or any file a reader understands) into
category → samples. Readers live in `formats.py` (API-Bank as published in `apibank.py`, ACEBench in `acebench.py`,
BFCL directories in `bfcl_dir.py`), the generated default pool in `default_pool.py`.
"""
from __future__ import annotations

import logging
import random
from collections import defaultdict
from typing import Iterable, Iterator

from toolace_r.bfcl_summary import AST_CATEGORIES
from toolace_r.config import BuiltinPoolConfig, PoolConfig
from toolace_r.data.bfcl_dir import load_bfcl_spec
from toolace_r.data.default_pool import generate_pool
from toolace_r.data.formats import ReadResult, read_samples_file
from toolace_r.data.prompts import NO_CALL_ANSWER, REFINE_INSTRUCTION, chat_messages, render_answer
from toolace_r.data.schema import CATEGORIES, Sample
from toolace_r.errors import DataError

__all__ = ["ReadResult", "read_samples_file", "load_pool", "load_pool_result", "load_builtin", "load_eval_spec", "pool_texts",
           "split_dev", "BFCL_CATEGORIES"]

log = logging.getLogger(__name__)

# BFCL's single-turn AST categories (v4 names), all evaluated by default for `bfcl:DIR` (toolace_r.data.bfcl_dir)
BFCL_CATEGORIES = AST_CATEGORIES


def load_builtin(cfg: BuiltinPoolConfig) -> tuple[list[Sample], list[Sample]]:
    """(train, heldout) of the generated default pool: cfg.n_train / cfg.n_heldout samples from cfg.seed."""
    train, heldout = generate_pool(cfg.n_train, cfg.n_heldout, cfg.seed, dict(cfg.mix), list(cfg.domains))
    log.info("built-in pool: %d train, %d held-out samples (seed %d)", len(train), len(heldout), cfg.seed)
    return train, heldout


def load_pool(pool_cfg: PoolConfig) -> list[Sample]:
    """The training pool: the train part of the built-in pool, or every sample a reader finds in pool_cfg.path.
    Skipped records (pool.on_error=skip) are counted and logged by the reader; `load_pool_result` also returns
    the count."""
    return load_pool_result(pool_cfg).samples


def load_pool_result(pool_cfg: PoolConfig) -> ReadResult:
    """`load_pool` with the reader's bookkeeping: records read, records skipped (pool.on_error=skip) and why.
    A truth call to a function the record does not declare is a bad record here (it would teach the model to
    invent functions), unlike in evaluation files, which are read as published."""
    if pool_cfg.path == "builtin":
        train, _ = load_builtin(pool_cfg.builtin)
        train = train[: pool_cfg.limit] if pool_cfg.limit else train
        return ReadResult(samples=train, format="builtin", records=len(train))
    result = read_samples_file(pool_cfg.path, pool_cfg.format, pool_cfg.on_error, limit=pool_cfg.limit,
                               require_declared=True)
    if not result.samples:
        raise DataError(f"no samples found: {result.records} records ({result.format}), none with a tool call, "
                        f"{result.skipped} skipped" + (f"; first error: {result.errors[0]}" if result.errors else ""),
                        path=pool_cfg.path)
    return result


def split_dev(samples: list[Sample], size: int, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """(train, dev): `size` samples carved out of `samples` for the driver's decisions (pool.dev_size, pool.dev_seed).

    Stratified by category: category c gets size * n_c / n samples, rounded by largest remainder (ties by category
    name), so every category keeps its share. Within a category the ids are sorted and drawn by a generator seeded
    with (seed, category): the split depends only on the set of samples and the seed, not on their order. Both
    parts keep the input order. Disjoint by construction; size 0 → (samples, [])."""
    if size < 0:
        raise DataError(f"pool.dev_size must be >= 0, got {size}")
    if size == 0:
        return list(samples), []
    if size >= len(samples):
        raise DataError(f"pool.dev_size = {size} leaves nothing to train on: the pool has {len(samples)} samples")
    groups: dict[str, list[str]] = defaultdict(list)
    for s in samples:
        groups[s.category].append(s.id)
    exact = {c: size * len(ids) / len(samples) for c, ids in groups.items()}
    quota = {c: int(x) for c, x in exact.items()}
    for c in sorted(groups, key=lambda c: (quota[c] - exact[c], c))[: size - sum(quota.values())]:
        quota[c] += 1
    dev_ids: set[str] = set()
    for c in sorted(groups):
        dev_ids.update(random.Random(f"dev-{seed}-{c}").sample(sorted(groups[c]), quota[c]))
    return [s for s in samples if s.id not in dev_ids], [s for s in samples if s.id in dev_ids]


def _group(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        out[s.category].append(s)
    return {c: out[c] for c in sorted(out, key=lambda c: (CATEGORIES.index(c) if c in CATEGORIES else 99, c))}


def _limit(groups: dict[str, list[Sample]], limit: int) -> dict[str, list[Sample]]:
    return {k: v[:limit] for k, v in groups.items()} if limit else groups


def load_eval_spec(spec: str, limit: int = 0, builtin: BuiltinPoolConfig | None = None,
                   on_error: str = "raise") -> dict[str, list[Sample]]:
    """Eval spec → {category: samples}, at most `limit` per category (0 = all).

    - `builtin`: the held-out split of the built-in pool (same seed as training, so no leaks), by category;
    - `bfcl:DIR[:cat1,cat2]`: BFCL v3 or v4 question files (+ possible_answer/) in DIR, by BFCL category, every
      single-turn AST category present by default; `bfcl:pkg` = the data of the installed bfcl-eval package;
    - `apibank:FILE_OR_DIR`: API-Bank as published (level-1/2-api.json → apibank_l1/apibank_l2) or in Hammer's
      structure (key = file stem);
    - `acebench:DIR[:cats]`: ACEBench's normal and special categories of a data_en dir, by ACEBench category;
    - anything else: a file or HF datasets dir any reader understands, grouped by sample category.
    """
    kind, _, rest = spec.partition(":")
    if spec == "builtin":
        _, heldout = load_builtin(builtin or BuiltinPoolConfig())
        return _limit(_group(heldout), limit)
    if kind == "bfcl" and rest:
        return load_bfcl_spec(rest, spec, limit=limit, on_error=on_error)
    if kind == "apibank" and rest:  # published level-N-api.json or Hammer's copy (toolace_r.data.apibank)
        from toolace_r.data.apibank import load_apibank

        return load_apibank(rest, limit=limit, on_error=on_error)
    if kind == "acebench" and rest:  # a data_en dir (toolace_r.data.acebench)
        from toolace_r.data.acebench import load_acebench

        return load_acebench(rest, limit=limit, on_error=on_error)
    return _limit(_group(read_samples_file(spec, "auto", on_error).samples), limit)


def pool_texts(samples: Iterable[Sample], style: str = "compact") -> Iterator[str]:
    """Text a tiny tokenizer is trained on: each sample's rendered chat (system prompt with the tools, dialogue) and
    its answer, plus the fixed refinement phrases, so that the model's whole input/output vocabulary is covered."""
    yield REFINE_INSTRUCTION
    yield NO_CALL_ANSWER
    for s in samples:
        for msg in chat_messages(s.tools, s.messages, style):
            yield msg["content"]
        yield render_answer(s.gold_calls())
