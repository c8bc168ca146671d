"""What constrained decoding of tool calls costs per token (toolace_r.constrain, issue 20 item 2).

    python benchmarks/guided_cost.py [--model DIR] [--items N] [--out FILE]

1. The guide alone, on random logits (no model): CPU µs per decoding step of `RowGuide.choose` + `sync` (llguidance's
   mask, the mask applied to the logits and the pick, the budget check, taking the token), and of the mask alone,
   for the demo model's tokenizer (2 048 tokens) and for a 129 280-token byte-level BPE (DeepSeek's tokenizer.json as
   the litellm package ships it; skipped when absent), on the built-in pool's tools, tool_choice required.
2. With the model (default: the demo's trained model, `--model`): the built-in held-out items answered in one pass
   (adaptive_refine, max_rounds=1, greedy) plain and guided (eval.guided's constraint), CPU seconds per generated
   token of each, so the guide's share of a decoding step is seen beside the forward pass.

CPU time of this process (torch on 1 thread): on the shared 2-core box wall clock moves with the other jobs.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolace_r import constrain  # noqa: E402
from toolace_r.data.default_pool import generate_pool  # noqa: E402

DEMO_MODEL = "/tmp/fresh6/runs/demo/iter_002/model"
BIG_TOKENIZER = "litellm/litellm_core_utils/tokenizers/deepseek_tokenizer.json"


def big_tokenizer():
    import site

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    for root in site.getsitepackages():
        path = Path(root) / BIG_TOKENIZER
        if path.is_file():
            core = Tokenizer.from_file(str(path))
            eos = core.token_to_id("<｜end▁of▁sentence｜>")
            tok = PreTrainedTokenizerFast(tokenizer_object=core)
            tok.eos_token = core.id_to_token(eos)
            return tok
    return None


def guide_steps(tokenizer, samples, steps_per_answer: int, rng: random.Random) -> dict:
    """µs (CPU) per choose+sync and per mask, over answers to the samples' tools with random logits."""
    eos = {tokenizer.eos_token_id}
    t0 = time.process_time()
    vocab = constrain.Vocab.of(tokenizer, eos, len(tokenizer))
    build_s = time.process_time() - t0
    per_step, per_mask = [], []
    for sample in samples:
        c = constrain.CallConstraint(sample.tools)
        budget = constrain.shortest_answer_tokens(c, vocab) + steps_per_answer
        g = constrain.guide(c, vocab)
        gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
        tokens: list[int] = []
        while len(tokens) < budget:
            logits = torch.randn(len(tokenizer), generator=gen) * 3
            t = time.process_time()
            g.mask()
            per_mask.append(time.process_time() - t)
            t = time.process_time()
            token = g.choose(logits, lambda x: x.argmax(-1), budget - len(tokens))
            tokens.append(token)
            g.sync(tokens)
            per_step.append(time.process_time() - t)
            if token in eos:
                break
    return {"vocab": len(tokenizer), "vocab_build_s": round(build_s, 3), "steps": len(per_step),
            "step_us_mean": round(1e6 * statistics.fmean(per_step), 1),
            "mask_us_mean": round(1e6 * statistics.fmean(per_mask), 1)}


def with_model(model_dir: str, n_items: int) -> dict:
    from toolace_r.config import load_config
    from toolace_r.data.pool import load_builtin
    from toolace_r.evaluate import _guided
    from toolace_r.models import load_model, read_meta
    from toolace_r.refine import RefineItem, adaptive_refine

    cfg = load_config(str(Path(__file__).resolve().parents[1] / "jobs" / "demo.yaml"), [])
    _, held = load_builtin(cfg.pool.builtin)
    held = held[:n_items]
    model, tok = load_model(model_dir)
    style = read_meta(model_dir).get("prompt_style", "signature")
    out = {}
    for name, guided in (("plain", False), ("guided", True), ("plain_again", False), ("guided_again", True)):
        items = [RefineItem(s.tools, s.messages, constraint=_guided(s.tools) if guided else None) for s in held]
        c0 = time.process_time()
        res = adaptive_refine(model, tok, items, max_rounds=1, max_new_tokens=96, style=style)
        cpu = time.process_time() - c0
        tokens = sum(r.tokens for r in res)
        out[name] = {"cpu_s": round(cpu, 3), "tokens": tokens, "cpu_ms_per_token": round(1e3 * cpu / tokens, 3)}
    for name in ("plain", "guided"):
        again = out.pop(f"{name}_again")
        out[name]["cpu_ms_per_token"] = min(out[name]["cpu_ms_per_token"], again["cpu_ms_per_token"])
    out["guided_overhead_ms_per_token"] = round(out["guided"]["cpu_ms_per_token"] - out["plain"]["cpu_ms_per_token"], 3)
    return {"model": model_dir, "items": len(held), "max_new_tokens": 96, **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEMO_MODEL)
    parser.add_argument("--items", type=int, default=160)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "guided_cost.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(0)
    _, samples = generate_pool(0, 60, seed=7, domains=None)
    from toolace_r.models import load_tokenizer

    result: dict = {"guide": {}}
    if Path(args.model).is_dir():
        result["guide"]["demo_tokenizer"] = guide_steps(load_tokenizer(args.model), samples, 40, rng)
    big = big_tokenizer()
    if big is not None:
        result["guide"]["deepseek_tokenizer"] = guide_steps(big, samples, 40, rng)
    if Path(args.model).is_dir():
        result["model"] = with_model(args.model, args.items)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
