"""Model-aware selection (PAPER.md §1): which samples does the next iteration train on?

Input: probe rows (`id`, `k`, `n_correct`, `pass_rate`; see probe.py). Output: a `Selection` — the chosen ids, the
reason each was chosen, and summary counts. Policies (`select.policy`):

- `learnable` (default): keep 0 < p < 1 (the model sometimes gets it right: it can learn it, it has not mastered it);
  drop p = 1 (mastered); hold back p = 0 (too hard for now) except a `too_hard_fraction` of them, drawn by a seeded
  RNG, mixed in as a curriculum;
- `threshold`: keep min_pass <= p <= max_pass;
- `all`: keep everything (plain SFT on the whole pool);
- `random`: a seeded random subset of a given size (ablation: same budget as model-aware selection, no model).

Iteration 0 without a probe (`run.probe_first_iteration: false`) trains on a seed subset (`seed_size`, or
`seed_fraction` of the pool): a model that starts at p = 0 everywhere would select nothing. When the starting model
was probed (a warm base, as in the paper), iteration 0 selects by the policy like every later iteration. With `accumulate`, the selection is the union with
the previous iteration's.

All choices are pure functions of (rows, config, iteration, previous): the same inputs give the same selection,
whatever order the probe rows come in.
"""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from toolace_r.config import SelectConfig
from toolace_r.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SELECTION_FILE = "selection.json"

# Why an id is (or is not) in the selection.
SEED, LEARNABLE, TOO_HARD_MIXED_IN, IN_THRESHOLD, ALL, RANDOM, ACCUMULATED = (
    "seed_subset", "learnable", "too_hard_mixed_in", "in_threshold", "all", "random", "accumulated")


@dataclass
class Selection:
    ids: list[str]  # sorted
    reasons: dict[str, str]  # id -> one of the reason names above
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Probed:
    id: str
    n_correct: int | None
    k: int | None
    pass_rate: float | None  # None: not probed (iteration 0 may select from plain pool ids)

    @property
    def mastered(self) -> bool:
        if self.k and self.n_correct is not None:
            return self.n_correct == self.k
        return self.pass_rate is not None and self.pass_rate >= 1.0

    @property
    def too_hard(self) -> bool:
        if self.k and self.n_correct is not None:
            return self.n_correct == 0
        return self.pass_rate is not None and self.pass_rate <= 0.0

    @property
    def learnable(self) -> bool:
        return self.pass_rate is not None and not self.mastered and not self.too_hard


def _rng(cfg: SelectConfig, iteration: int, purpose: str) -> random.Random:
    # A string seed is hashed deterministically by random.Random (not Python's salted hash()).
    return random.Random(f"{cfg.seed}:{iteration}:{purpose}")


def _draw(ids: list[str], n: int, rng: random.Random) -> list[str]:
    """n ids drawn without replacement; sorted first so the draw does not depend on input order."""
    return rng.sample(sorted(ids), min(max(n, 0), len(ids)))


def _read_rows(probe_rows: Iterable[dict[str, Any]], need_pass_rate: bool) -> list[_Probed]:
    rows, seen = [], set()
    for index, row in enumerate(probe_rows):
        if "id" not in row or row["id"] in (None, ""):
            raise DataError("probe row has no id", index=index, field="id")
        rid = str(row["id"])
        if rid in seen:
            raise DataError(f"duplicate id {rid!r} in probe rows", index=index, field="id")
        seen.add(rid)
        k, n_correct, p = row.get("k"), row.get("n_correct"), row.get("pass_rate")
        if p is None and k and n_correct is not None:
            p = n_correct / k
        if p is None:
            if need_pass_rate:
                raise DataError(f"probe row {rid!r} has no pass_rate (nor k and n_correct)", index=index, field="pass_rate")
        elif not 0.0 <= float(p) <= 1.0:
            raise DataError(f"probe row {rid!r}: pass_rate {p} is outside [0, 1]", index=index, field="pass_rate")
        if k is not None and n_correct is not None and not 0 <= int(n_correct) <= int(k):
            raise DataError(f"probe row {rid!r}: n_correct {n_correct} is outside [0, k={k}]", index=index, field="n_correct")
        rows.append(_Probed(rid, None if n_correct is None else int(n_correct), None if k is None else int(k),
                            None if p is None else float(p)))
    return rows


def seed_subset(ids: Iterable[str], cfg: SelectConfig) -> list[str]:
    """Iteration 0's training set: `seed_size` ids if > 0, else round(seed_fraction × pool), seeded draw."""
    ids = sorted(set(ids))
    if cfg.seed_size > 0:
        n = cfg.seed_size
    else:
        if not 0.0 < cfg.seed_fraction <= 1.0:
            raise ConfigError(f"select.seed_fraction must be in (0, 1], got {cfg.seed_fraction}")
        n = round(cfg.seed_fraction * len(ids))
    if n >= len(ids):
        return ids
    return sorted(_draw(ids, n, _rng(cfg, 0, "seed")))


def select(
    probe_rows: Iterable[dict[str, Any]],
    cfg: SelectConfig,
    iteration: int,
    previous: set[str] | None = None,
    *,
    random_size: int | None = None,
) -> Selection:
    """Choose the next training set. `random_size` (policy=random) overrides cfg.random_size, e.g. with the size of
    the model-aware selection the ablation compares against."""
    if iteration < 0:
        raise ConfigError(f"iteration must be >= 0, got {iteration}")
    rows = _read_rows(probe_rows, need_pass_rate=iteration > 0 and cfg.policy not in ("all", "random"))
    previous = set(previous or ())
    counts = {
        "probed": len(rows),
        "mastered": sum(r.mastered for r in rows),
        "too_hard": sum(r.too_hard for r in rows),
    }
    counts["learnable"] = sum(r.learnable for r in rows)
    chosen: dict[str, str] = {}

    if iteration == 0 and all(r.pass_rate is None for r in rows):
        chosen = {i: SEED for i in seed_subset((r.id for r in rows), cfg)}
    elif cfg.policy == "learnable":
        if not 0.0 <= cfg.too_hard_fraction <= 1.0:
            raise ConfigError(f"select.too_hard_fraction must be in [0, 1], got {cfg.too_hard_fraction}")
        chosen = {r.id: LEARNABLE for r in rows if r.learnable}
        too_hard = [r.id for r in rows if r.too_hard]
        n_mix = round(cfg.too_hard_fraction * len(too_hard))
        chosen.update({i: TOO_HARD_MIXED_IN for i in _draw(too_hard, n_mix, _rng(cfg, iteration, "too_hard"))})
    elif cfg.policy == "threshold":
        if not 0.0 <= cfg.min_pass <= cfg.max_pass <= 1.0:
            raise ConfigError(f"select: need 0 <= min_pass <= max_pass <= 1, got {cfg.min_pass}, {cfg.max_pass}")
        chosen = {r.id: IN_THRESHOLD for r in rows if cfg.min_pass <= r.pass_rate <= cfg.max_pass}
    elif cfg.policy == "all":
        chosen = {r.id: ALL for r in rows}
    elif cfg.policy == "random":
        size = random_size if random_size is not None else cfg.random_size
        if size <= 0:
            raise ConfigError("select.policy=random needs a size: set select.random_size (or pass random_size)")
        chosen = {i: RANDOM for i in _draw([r.id for r in rows], size, _rng(cfg, iteration, "random"))}
    else:
        raise ConfigError(f"select.policy {cfg.policy!r} is not one of learnable, threshold, all, random")

    counts["too_hard_mixed_in"] = sum(reason == TOO_HARD_MIXED_IN for reason in chosen.values())
    counts["chosen_now"] = len(chosen)
    reasons = dict(chosen)
    if cfg.accumulate:
        for i in previous - chosen.keys():
            reasons[i] = ACCUMULATED
    counts["accumulated"] = sum(reason == ACCUMULATED for reason in reasons.values())
    counts["selected"] = len(reasons)
    counts["new"] = len(reasons.keys() - previous)
    return Selection(ids=sorted(reasons), reasons=reasons, counts=counts)


def write_selection(selection: Selection, out_dir: str | os.PathLike, **meta: Any) -> str:
    """`out_dir/selection.json`: {meta..., counts, ids, reasons}, written atomically. Returns its path."""
    from toolace_r.io import write_json

    path = Path(out_dir) / SELECTION_FILE
    write_json(path, {**meta, "counts": selection.counts, "ids": selection.ids, "reasons": selection.reasons})
    return str(path)


def read_selection(path: str | os.PathLike) -> Selection:
    """A selection written by `write_selection` (path to the file or its directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / SELECTION_FILE
    if not p.is_file():
        raise DataError(f"selection file {p} does not exist")
    data = json.loads(p.read_text(encoding="utf-8"))
    return Selection(ids=list(data["ids"]), reasons=dict(data["reasons"]), counts=dict(data.get("counts", {})))


def select_command(args, cfg) -> int:
    """`toolace-r select --probe DIR [--iteration N] [--previous FILE] [--out DIR] [--config FILE] [select.*=...]`."""
    from toolace_r.probe import read_probe

    rows = read_probe(args.probe)
    previous_path = getattr(args, "previous", None)
    previous = set(read_selection(previous_path).ids) if previous_path else None
    selection = select(rows, cfg.select, args.iteration, previous)
    out = args.out or str(Path(args.probe).resolve().parent)
    path = write_selection(selection, out, iteration=args.iteration, policy=cfg.select.policy, probe=str(args.probe))
    c = selection.counts
    print(f"iteration {args.iteration}, policy {cfg.select.policy}: selected {c['selected']} of {c['probed']} "
          f"({c['new']} new) — mastered {c['mastered']}, learnable {c['learnable']}, too hard {c['too_hard']} "
          f"({c['too_hard_mixed_in']} mixed in)")
    print(f"selection: {path}")
    return 0
