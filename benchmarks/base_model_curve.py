"""How the tiny base model learns from the general corpus: target-pool held-out accuracy against training tokens and
optimizer steps, and which kinds of argument errors it makes (the feasibility measurement behind `model.base`).

    python benchmarks/base_model_curve.py [--quick] [--out FILE] [model.base.train_tokens=...]

Builds a base model exactly as `model.path=tiny-base` would (toolace_r.base_model.build_base_model) into a scratch
dir, and every `--eval-every` steps decodes the built-in pool's held-out items greedily (single pass) and judges them
with the AST checker. The target pool is never trained on: the figures say how much of it the general skills solve.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolace_r.config import load_config  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="jobs/demo.yaml")
    ap.add_argument("--quick", action="store_true", help="300 k tokens, 60 items: a smoke run (≤ 3 min)")
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--out", default="benchmarks/results/base_model_curve.json")
    ap.add_argument("--keep", default="", help="copy the built model here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    overrides = list(args.overrides)
    if args.quick:
        overrides += ["model.base.train_tokens=300000"]
        args.items, args.eval_every = 60, 100
    cfg = load_config(args.config, overrides)

    import torch

    from toolace_r.base_model import build_base_model
    from toolace_r.calls import check
    from toolace_r.data.default_pool import generate_pool
    from toolace_r.models import load_tokenizer
    from toolace_r.refine import RefineItem, adaptive_refine

    _, heldout = generate_pool(0, args.items, seed=cfg.pool.builtin.seed, mix=dict(cfg.pool.builtin.mix),
                               domains=list(cfg.pool.builtin.domains))  # the target pool's test split
    state: dict = {}

    def on_eval(step: int, tokens: int) -> dict:
        model, tok = state["model"], state["tokenizer"]
        t0 = time.time()
        results = adaptive_refine(model, tok, [RefineItem(s.tools, s.messages) for s in heldout], max_rounds=1,
                                  max_new_tokens=96, style=cfg.model.prompt_style)
        verdicts = [check(r.answer, s.tools, s.truth, s.category) for r, s in zip(results, heldout)]
        by_cat: dict[str, list[bool]] = {}
        for s, v in zip(heldout, verdicts):
            by_cat.setdefault(s.category, []).append(v.valid)
        errors = Counter(v.error_type for v in verdicts if not v.valid)
        acc = sum(v.valid for v in verdicts) / len(verdicts)
        print(f"step {step:6d}  tokens {tokens / 1e6:6.2f} M  held-out {acc:.3f}  "
              + " ".join(f"{c} {sum(x) / len(x):.2f}" for c, x in sorted(by_cat.items()))
              + f"  ({time.time() - t0:.0f} s)", flush=True)
        return {"accuracy": acc, "categories": {c: sum(x) / len(x) for c, x in by_cat.items()},
                "errors": dict(errors.most_common(8))}

    # the model object is created inside build_base_model; catch it through the pretrain hook
    import toolace_r.base_model as bm

    original = bm.pretrain

    def pretrain(model, tokenizer, cfg, on_eval=None, eval_every=0):
        state["model"], state["tokenizer"] = model, tokenizer
        return original(model, tokenizer, cfg, on_eval, eval_every)

    bm.pretrain = pretrain
    with tempfile.TemporaryDirectory() as tmp:
        out = build_base_model(cfg, Path(tmp) / "base", on_eval=on_eval, eval_every=args.eval_every)
        state["model"].eval()
        final = on_eval(-1, -1)
        history = json.loads((out / "base_build.json").read_text())["history"]
        if args.keep:
            import shutil

            shutil.rmtree(args.keep, ignore_errors=True)
            shutil.copytree(out, args.keep)
    speed = [h["tokens_per_s"] for h in history if "tokens_per_s" in h]
    report = {"headline": {"final_heldout_accuracy": final["accuracy"], "train_tokens": cfg.model.base.train_tokens,
                           "tokens_per_s": speed[-1] if speed else None, "threads": torch.get_num_threads()},
              "final": final, "history": history}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report["headline"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
