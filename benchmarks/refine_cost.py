"""What adaptive self-refinement costs: adaptive vs fixed 3-round refinement, and the cost of a later round.

    python benchmarks/refine_cost.py [--quick] [--out FILE] [--threads N]

1. Trains a tiny Llama (1 M params, plain torch, bf16 autocast) briefly on the built-in pool: direct samples plus
   self-refinement samples (a right previous answer → the same answer; a perturbed, wrong one → the gold answer), so
   that its answers are mostly stable under refinement, as a ToolACE-R model's are.
2. On the built-in held-out split, runs toolace_r.refine.adaptive_refine in every mode, side by side on the same model
   and items: fixed 3 rounds vs adaptive stopping, each with/without prefix KV reuse and greedy draft verification.
   Reports decoding time, model forward passes, tokens generated and fed, accuracy (AST checker), mean rounds, the
   time of round 2 and 3 relative to round 1, and whether every mode gave token-for-token the same answers.

Decoding time is this process's CPU time (run with --threads 1): on a shared, oversubscribed machine wall-clock time
moves ±50 % between identical runs; both are in the JSON (decode_time_s = CPU, decode_wall_s = wall).

Headline (JSON "headline"): time_saving = 1 − adaptive/fixed-3 decoding time (adaptive = the default: stop when
stable, prefix reuse, draft verification; fixed-3 = three plain rounds), token_saving (tokens generated), the two
accuracies, later_round_cost = time of round 2 / round 1 with prefix reuse + draft verification, and the same with
prefix reuse alone.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolace_r.calls import check  # noqa: E402
from toolace_r.config import BuiltinPoolConfig, TinyModelConfig  # noqa: E402
from toolace_r.data import prompts  # noqa: E402
from toolace_r.data.pool import load_builtin, pool_texts  # noqa: E402
from toolace_r.models import build_tiny_model, load_model, read_meta, write_meta  # noqa: E402
from toolace_r.refine import RefineItem, RoundStats, adaptive_refine  # noqa: E402
from toolace_r.refine_corpus import direct_row, refine_row  # noqa: E402

STYLE = "compact"


# ------------------------------------------------------------------------------------------------ training
def perturb(sample, rng: random.Random) -> str:
    """A plausible wrong answer: gold with one argument changed or dropped, or a call dropped / a call for nothing."""
    calls = json.loads(json.dumps(sample.gold_calls()))
    if not calls:
        tool = rng.choice(sample.tools)
        return prompts.render_answer([{"name": tool["name"], "arguments": {}}])
    if len(calls) > 1 and rng.random() < 0.3:
        calls.pop(rng.randrange(len(calls)))
        return prompts.render_answer(calls)
    call = rng.choice(calls)
    if call["arguments"] and rng.random() < 0.7:
        key = rng.choice(sorted(call["arguments"]))
        value = call["arguments"][key]
        if isinstance(value, bool):
            call["arguments"][key] = not value
        elif isinstance(value, (int, float)):
            call["arguments"][key] = value + rng.choice([1, 2, 10])
        elif rng.random() < 0.5:
            del call["arguments"][key]
        else:
            call["arguments"][key] = str(value)[::-1] or "x"
    else:
        others = [t["name"] for t in sample.tools if t["name"] != call["name"]]
        if not others:
            return prompts.NO_CALL_ANSWER
        call["name"] = rng.choice(others)
    return prompts.render_answer(calls)


def training_rows(train, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for s in train:
        rows.append(direct_row(s, STYLE))
        gold = prompts.render_answer(s.gold_calls())
        roll = rng.random()
        if roll < 0.35:
            rows.append(refine_row(s, gold, right=True, style=STYLE))
        elif roll < 0.7:
            wrong = perturb(s, rng)
            if wrong != gold:
                rows.append(refine_row(s, wrong, right=False, style=STYLE))
    return rows


def train(model, tok, rows, budget_s: float, seed: int, max_len: int = 512, tokens_per_batch: int = 4096) -> dict:
    """Plain-torch SFT, loss on the answer tokens only, length-grouped batches, until the time budget is spent."""
    eos = tok.eos_token_id
    data = []
    for r in rows:
        p = tok(prompts.prompt_text(tok, r["chat"]), add_special_tokens=False)["input_ids"]
        a = tok(r["completion"], add_special_tokens=False)["input_ids"] + [eos]
        if len(p) + len(a) > max_len:
            continue  # a truncated answer would leave a row with no target (NaN loss)
        data.append((p + a, [-100] * len(p) + a))
    rng = random.Random(seed)
    data.sort(key=lambda x: len(x[0]))
    batches, cur = [], []
    for item in data:
        if cur and (len(cur) + 1) * len(item[0]) > tokens_per_batch:
            batches.append(cur)
            cur = []
        cur.append(item)
    if cur:
        batches.append(cur)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    est_steps = max(50, int(budget_s * 4))  # rough; only shapes the schedule
    model.train()
    start, step, losses, tokens = time.perf_counter(), 0, [], 0
    while time.perf_counter() - start < budget_s:
        rng.shuffle(batches)
        for batch in batches:
            if time.perf_counter() - start >= budget_s:
                break
            width = max(len(x[0]) for x in batch)
            ids = torch.tensor([x[0] + [tok.pad_token_id] * (width - len(x[0])) for x in batch])
            labels = torch.tensor([x[1] + [-100] * (width - len(x[1])) for x in batch])
            mask = (torch.arange(width)[None, :] < torch.tensor([len(x[0]) for x in batch])[:, None]).long()
            lr = 2e-3 * min(1.0, (step + 1) / 50) * max(0.1, 0.5 * (1 + math.cos(math.pi * min(step / est_steps, 1))))
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            tokens += int(mask.sum())
            step += 1
    model.eval()
    wall = time.perf_counter() - start
    return {"steps": step, "loss_first": losses[0], "loss_last": sum(losses[-10:]) / len(losses[-10:]),
            "train_tokens": tokens, "tokens_per_s": tokens / wall, "wall_s": wall, "rows": len(data),
            "rows_too_long": len(rows) - len(data)}


# ------------------------------------------------------------------------------------------------ measuring
MODES = {  # name: (adaptive, reuse_prefix, draft_verify)
    "fixed3_plain": (False, False, False),
    "fixed3_reuse": (False, True, False),
    "fixed3_draft": (False, False, True),
    "fixed3_reuse_draft": (False, True, True),
    "adaptive_plain": (True, False, False),
    "adaptive_reuse": (True, True, False),
    "adaptive_reuse_draft": (True, True, True),
}
QUICK_MODES = ["fixed3_plain", "fixed3_reuse", "fixed3_reuse_draft", "adaptive_reuse_draft"]


def run_mode(model, tok, samples, mode: str, max_new_tokens: int, batch_size: int) -> dict:
    adaptive, reuse, draft = MODES[mode]
    items = [RefineItem(s.tools, s.messages) for s in samples]
    stats: dict[int, RoundStats] = {}
    start = time.perf_counter()
    results = adaptive_refine(model, tok, items, max_rounds=3, max_new_tokens=max_new_tokens, style=STYLE,
                              draft_verify=draft, reuse_prefix=reuse, adaptive=adaptive, batch_size=batch_size,
                              stats=stats)
    wall = time.perf_counter() - start
    ok = [check(r.answer, s.tools, s.truth, s.category).valid for r, s in zip(results, samples)]
    ok1 = [check(r.first_answer, s.tools, s.truth, s.category).valid for r, s in zip(results, samples)]
    return {
        "time_s": wall,
        "decode_wall_s": sum(st.time_s for st in stats.values()),
        # CPU time of this process (1 torch thread): what decoding costs, steady under the shared box's load
        "decode_time_s": sum(st.cpu_s for st in stats.values()),
        "forward_passes": sum(st.forward_passes for st in stats.values()),
        "tokens_generated": sum(st.tokens_generated for st in stats.values()),
        "tokens_fed": sum(st.tokens_fed for st in stats.values()),
        "accuracy": sum(ok) / len(ok),
        "accuracy_single_pass": sum(ok1) / len(ok1),
        "mean_rounds": sum(r.rounds for r in results) / len(results),
        "round_time_s": {r: st.cpu_s for r, st in sorted(stats.items())},
        "round_wall_s": {r: st.time_s for r, st in sorted(stats.items())},
        "round_forward_passes": {r: st.forward_passes for r, st in sorted(stats.items())},
        "round_items": {r: st.items for r, st in sorted(stats.items())},
        "draft_acceptance": (sum(st.draft_accepted for st in stats.values())
                             / max(1, sum(st.draft_tokens for st in stats.values()))),
        "_answers": [r.answers for r in results],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="≤ 3 min: shorter training, 32 held-out items, 4 modes")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "refine_cost.json"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--train-s", type=float, default=0, help="training budget in seconds (default 75 quick, 300 full)")
    ap.add_argument("--items", type=int, default=0, help="held-out items (default 32 quick, 200 full)")
    ap.add_argument("--repeats", type=int, default=0, help="timing repeats per mode, min taken (default 1 quick, 3 full)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", choices=["small", "base"], default="small",
                    help="tiny model to train: small (hidden 64, 2 layers) or base (hidden 128, 4 layers)")
    ap.add_argument("--model", help="measure this model dir instead of training one (its saved prompt style); "
                    "with --train-s, train it further first")
    ap.add_argument("--save-model", help="save the trained model here (reuse it with --model)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train_s = args.train_s or (60 if args.quick else 300)
    n_items = args.items or (32 if args.quick else 200)
    max_new_tokens = 64 if args.quick else 96
    modes = QUICK_MODES if args.quick else list(MODES)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    train_set, heldout = load_builtin(BuiltinPoolConfig(n_train=4000, n_heldout=200, seed=args.seed))
    training: dict = {}
    if args.model:  # an existing model dir (e.g. iter_NNN/model of a `toolace-r run`, or --save-model of a run)
        global STYLE
        STYLE = read_meta(args.model).get("prompt_style", STYLE)  # the prompts the model was trained on
        model, tok = load_model(args.model, dtype="float32", device="cpu")
        training = {"model": args.model}
        if args.train_s:  # continue training it
            training.update(train(model, tok, training_rows(train_set, args.seed + 1), args.train_s, args.seed + 1))
            print(f"  trained {training['steps']} more steps, loss {training['loss_first']:.3f} → "
                  f"{training['loss_last']:.3f}", flush=True)
    else:
        shape = TinyModelConfig(seed=args.seed) if args.size == "base" else TinyModelConfig(
            hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256, seed=args.seed)
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = build_tiny_model(Path(tmp) / "m", pool_texts(train_set + heldout, STYLE), shape, STYLE)
            model, tok = load_model(str(model_dir), dtype="float32", device="cpu")
        rows = training_rows(train_set, args.seed)
        print(f"training {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params on {len(rows)} rows "
              f"for {train_s:.0f} s ...", flush=True)
        training = train(model, tok, rows, train_s, args.seed)
        print(f"  {training['steps']} steps, loss {training['loss_first']:.2f} → {training['loss_last']:.3f}, "
              f"{training['tokens_per_s']:.0f} tokens/s", flush=True)

    if args.save_model:
        model.save_pretrained(args.save_model)
        tok.save_pretrained(args.save_model)
        write_meta(args.save_model, prompt_style=STYLE)
    samples = heldout[:n_items]
    results: dict[str, dict] = {}
    with torch.inference_mode():
        for rep in range(repeats):
            order = modes if rep % 2 == 0 else modes[::-1]  # interleave: load drift hits all modes alike
            for mode in order:
                res = run_mode(model, tok, samples, mode, max_new_tokens=max_new_tokens, batch_size=16)
                if mode not in results or res["decode_time_s"] < results[mode]["decode_time_s"]:
                    results[mode] = res
                print(f"  rep {rep} {mode:<22} {res['decode_time_s']:7.2f} s", flush=True)

    fixed_answers = {m: r.pop("_answers") for m, r in results.items()}
    fixed = [m for m in modes if m.startswith("fixed3")]
    adaptive = [m for m in modes if m.startswith("adaptive")]
    same_fixed = all(fixed_answers[m] == fixed_answers[fixed[0]] for m in fixed)
    same_adaptive = all(fixed_answers[m] == fixed_answers[adaptive[0]] for m in adaptive)

    def round_cost(mode: str, r: int) -> float:
        if mode not in results:
            return float("nan")
        t = results[mode]["round_time_s"]
        return t.get(r, float("nan")) / t[1]

    base, best = results["fixed3_plain"], results["adaptive_reuse_draft"]
    headline = {
        "time_saving": 1 - best["decode_time_s"] / base["decode_time_s"],
        "token_saving": 1 - best["tokens_generated"] / base["tokens_generated"],
        "forward_pass_saving": 1 - best["forward_passes"] / base["forward_passes"],
        "accuracy_adaptive": best["accuracy"],
        "accuracy_fixed3": base["accuracy"],
        "accuracy_single_pass": base["accuracy_single_pass"],
        "mean_rounds_adaptive": best["mean_rounds"],
        "later_round_cost": round_cost("fixed3_reuse_draft", 2),
        "later_round_cost_reuse_only": round_cost("fixed3_reuse", 2),
        "later_round_cost_draft_only": round_cost("fixed3_draft", 2),
        "later_round_cost_plain": round_cost("fixed3_plain", 2),
        "time_saving_vs_fixed3_same_optimisations": 1 - best["decode_time_s"] / results["fixed3_reuse_draft"]["decode_time_s"],
        "answers_identical_across_decoding_paths": same_fixed and same_adaptive,
    }

    head = (f"{'mode':<22} {'time s':>7} {'passes':>7} {'gen tok':>8} {'fed tok':>8} {'acc':>6} {'rounds':>6} "
            f"{'r2/r1':>6} {'r3/r1':>6} {'draft acc':>9}")
    print("\n" + head + "\n" + "-" * len(head))
    for mode, r in results.items():
        print(f"{mode:<22} {r['decode_time_s']:>7.2f} {r['forward_passes']:>7} {r['tokens_generated']:>8} "
              f"{r['tokens_fed']:>8} {r['accuracy']:>6.1%} {r['mean_rounds']:>6.2f} {round_cost(mode, 2):>6.2f} "
              f"{round_cost(mode, 3):>6.2f} {r['draft_acceptance']:>9.1%}")
    print()
    for k, v in headline.items():
        print(f"{k:<42} {v:.3f}" if isinstance(v, float) else f"{k:<42} {v}")
    out = {
        "benchmark": "refine_cost",
        "machine": f"{torch.get_num_threads()} torch threads, CPU",
        "args": vars(args), "items": n_items, "train": training, "modes": results, "headline": headline,
        "wall_s": time.perf_counter() - t0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from toolace_r.io import write_json

    write_json(args.out, out)
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
