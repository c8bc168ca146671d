"""Probe throughput: Ray Data probing vs. the loop a user would first write, same model, pool and k.

    python benchmarks/probe_throughput.py [--quick] [--out FILE] [--samples N] [--k K]

Arms, all on the same tiny Llama (built locally from the built-in pool text; no download), the same prompts and the
same sampling settings, every answer parsed and checked with calls.check:

- `naive_loop`       for each sample, for each of the k draws: `model.generate(one prompt)` — one prompt at a time;
- `naive_nrs`        for each sample: `model.generate(one prompt, num_return_sequences=k)`;
- `gen_*`            toolace_r.generation.Generator in this process (no Ray): length-sorted batches, and the k
                     draws either sharing one prompt KV cache (`gen_shared_prefix`, the default), via
                     `num_return_sequences` (`gen_num_return_seqs`), or as k repeated prompts (`gen_repeated_prompts`);
- `ray_AxT`          toolace_r.probe.probe on Ray Data: A actors × T torch threads (cpus_per_actor = T), wall time from
                     submitting the dataset to the parquet being renamed into place (actor start and model load
                     included; ray.init is not: a cluster is already up).

Headline: `speedup` = samples/s of the best Ray Data arm ÷ samples/s of `naive_loop`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

LOAD_START = os.getloadavg()
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = f"{REPO}:{os.environ.get('PYTHONPATH', '')}"  # Ray workers import the project


def build_model(out: Path, n_pool: int):
    from toolace_r.config import BuiltinPoolConfig, TinyModelConfig
    from toolace_r.data.pool import load_builtin, pool_texts
    from toolace_r.models import build_tiny_model

    train, _ = load_builtin(BuiltinPoolConfig(n_train=max(400, n_pool), n_heldout=10, seed=0))
    # The demo's model shape (config defaults: hidden 128, 4 layers, vocab 2048), random init.
    build_tiny_model(out, pool_texts(train, "compact"), TinyModelConfig(), "compact")
    return train[:n_pool]


def run_naive(model_dir: str, samples, k: int, gen: dict, per_prompt_k: bool) -> dict:
    """The loop a user writes first: one prompt per generate() call (and, without per_prompt_k, one draw per call)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolace_r.calls import check
    from toolace_r.data.prompts import render_prompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(0)
    n_tokens = n_correct = 0
    start = time.perf_counter()
    for s in samples:
        prompt = render_prompt(tok, s.tools, s.messages, "compact")
        inputs = tok(prompt, return_tensors="pt", add_special_tokens=False)
        calls = [k] if per_prompt_k else [1] * k
        for n in calls:
            with torch.no_grad():
                out = model.generate(**inputs, do_sample=True, temperature=gen["temperature"], top_p=gen["top_p"],
                                     max_new_tokens=gen["max_new_tokens"], num_return_sequences=n,
                                     pad_token_id=tok.pad_token_id)
            for row in out[:, inputs["input_ids"].shape[1]:]:
                ids = row.tolist()
                end = next((i for i, t in enumerate(ids) if t in (tok.eos_token_id, tok.pad_token_id)), len(ids))
                n_tokens += end
                text = tok.decode(ids[:end], skip_special_tokens=True)
                n_correct += check(text, s.tools, s.truth, s.category).valid
    wall = time.perf_counter() - start
    return {"wall_s": wall, "tokens": n_tokens, "answers": len(samples) * k, "n_correct": n_correct}


def run_generator(model_dir: str, samples, k: int, gen: dict, mode: str, batch_size: int) -> dict:
    """Generator in-process: the batching without Ray."""
    from toolace_r.calls import check
    from toolace_r.data.prompts import render_prompt
    from toolace_r.generation import Generator

    g = Generator.from_path(model_dir)
    prompts = [render_prompt(g.tokenizer, s.tools, s.messages, "compact") for s in samples]
    kwargs = dict(temperature=gen["temperature"], top_p=gen["top_p"], max_new_tokens=gen["max_new_tokens"], seed=0)
    start = time.perf_counter()
    if mode == "repeated_prompts":
        flat = g.generate([p for p in prompts for _ in range(k)], n=1, batch_size=batch_size * k, **kwargs)
        answers = [[a[0] for a in flat[i * k:(i + 1) * k]] for i in range(len(prompts))]
    else:
        answers = g.generate(prompts, n=k, batch_size=batch_size, share_prefix=(mode == "shared_prefix"), **kwargs)
    n_correct = sum(check(a.text, s.tools, s.truth, s.category).valid for s, ans in zip(samples, answers) for a in ans)
    wall = time.perf_counter() - start
    tokens = sum(a.n_tokens for ans in answers for a in ans)
    return {"wall_s": wall, "tokens": tokens, "answers": len(samples) * k, "n_correct": n_correct,
            "padding_fraction": round(1 - g.stats["prompt_tokens"] / max(1, g.stats["padded_prompt_tokens"]), 4)}


def run_ray(model_dir: str, samples, k: int, gen: dict, actors: int, threads: int, batch_size: int,
            gen_batch: int, out_dir: Path) -> dict:
    from toolace_r.config import Config
    from toolace_r.probe import SUMMARY_FILE, probe

    cfg = Config()
    cfg.probe.k = k
    cfg.probe.num_actors, cfg.probe.cpus_per_actor = actors, float(threads)
    cfg.probe.batch_size = batch_size
    cfg.probe.generation.batch_size = gen_batch
    cfg.probe.generation.temperature = gen["temperature"]
    cfg.probe.generation.top_p = gen["top_p"]
    cfg.probe.generation.max_new_tokens = gen["max_new_tokens"]
    start = time.perf_counter()
    path = probe(cfg, model_dir, samples, out_dir)
    wall = time.perf_counter() - start
    summary = json.loads((Path(path) / SUMMARY_FILE).read_text())
    return {"wall_s": wall, "tokens": summary["generated_tokens"], "answers": summary["answers"],
            "n_correct": round(summary["mean_pass_rate"] * summary["answers"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small pool (≤ 3 min)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "probe_throughput.json"))
    ap.add_argument("--samples", type=int, help="pool size (default 192: enough to amortise ~5 s of actor start-up, "
                    "as a real pool of thousands does; quick 16)")
    ap.add_argument("--k", type=int, help="answers per sample (default 8, quick 4)")
    ap.add_argument("--max-new-tokens", type=int, help="default 48, quick 32")
    ap.add_argument("--batch-size", type=int, default=8, help="Ray Data batch (samples per actor call)")
    ap.add_argument("--gen-batch", type=int, default=8, help="prompts per generate() call (× k rows)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the in-process arms (1 was fastest on the shared 2-core box)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n = args.samples or (16 if args.quick else 192)
    k = args.k or (4 if args.quick else 8)
    gen = {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": args.max_new_tokens or (32 if args.quick else 48)}

    import ray
    import torch

    work = Path(tempfile.mkdtemp(prefix="probe_bench_"))
    model_dir = str(work / "model")
    samples = build_model(Path(model_dir), n)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    arms: dict[str, dict] = {}

    def record(name: str, result: dict) -> None:
        result["samples_per_s"] = round(n / result["wall_s"], 3)
        result["tokens_per_s"] = round(result["tokens"] / result["wall_s"], 1)
        result["wall_s"] = round(result["wall_s"], 2)
        arms[name] = result
        print(f"  {name:22s} {result['wall_s']:8.1f}s {result['samples_per_s']:9.2f} samples/s "
              f"{result['tokens_per_s']:9.0f} tokens/s", flush=True)

    print(f"pool {n} samples × k={k}, max_new_tokens {gen['max_new_tokens']}, T={gen['temperature']}, "
          f"{os.cpu_count()} CPUs; in-process arms use {args.threads} torch thread(s)", flush=True)
    torch.set_num_threads(args.threads)
    gb = args.gen_batch
    # Ray arms first and last around the in-process arms, so a change in machine load shows up as a spread between
    # the two ray_2x1 runs rather than as a bias.
    record("ray_2x1", run_ray(model_dir, samples, k, gen, 2, 1, args.batch_size, gb, work / "p1"))
    record("naive_loop", run_naive(model_dir, samples, k, gen, per_prompt_k=False))
    record("naive_nrs", run_naive(model_dir, samples, k, gen, per_prompt_k=True))
    record("gen_shared_prefix", run_generator(model_dir, samples, k, gen, "shared_prefix", gb))
    record("gen_num_return_seqs", run_generator(model_dir, samples, k, gen, "num_return_sequences", gb))
    if not args.quick:
        record("gen_repeated_prompts", run_generator(model_dir, samples, k, gen, "repeated_prompts", gb))
    record("ray_1x2", run_ray(model_dir, samples, k, gen, 1, 2, args.batch_size, gb, work / "p2"))
    record("ray_2x1_again", run_ray(model_dir, samples, k, gen, 2, 1, args.batch_size, gb, work / "p3"))
    ray.shutdown()

    ray_arms = {a: arms[a] for a in arms if a.startswith("ray_")}
    best = max(ray_arms, key=lambda a: ray_arms[a]["samples_per_s"])
    naive = arms["naive_loop"]
    headline = {
        "speedup": round(ray_arms[best]["samples_per_s"] / naive["samples_per_s"], 2),
        "best_ray_arm": best,
        "ray_samples_per_s": ray_arms[best]["samples_per_s"],
        "ray_tokens_per_s": ray_arms[best]["tokens_per_s"],
        "naive_samples_per_s": naive["samples_per_s"],
        "naive_tokens_per_s": naive["tokens_per_s"],
        "speedup_vs_naive_nrs": round(ray_arms[best]["samples_per_s"] / arms["naive_nrs"]["samples_per_s"], 2),
        "shared_prefix_vs_num_return_sequences": round(
            arms["gen_shared_prefix"]["samples_per_s"] / arms["gen_num_return_seqs"]["samples_per_s"], 2),
    }
    print("\n| arm | wall s | samples/s | tokens/s | × naive_loop |\n|---|---|---|---|---|")
    for name, r in arms.items():
        print(f"| {name} | {r['wall_s']} | {r['samples_per_s']} | {r['tokens_per_s']} | "
              f"{r['samples_per_s'] / naive['samples_per_s']:.1f} |")
    print("\nheadline:", json.dumps(headline))
    result = {
        "benchmark": "probe_throughput",
        "command": " ".join(["python", "benchmarks/probe_throughput.py"] + sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU (shared with other jobs)",
        "setup": {"samples": n, "k": k, **gen, "model": "tiny Llama hidden 128 × 4 layers, vocab 2048, random init",
                  "prompt_style": "compact", "ray_batch_size": args.batch_size,
                  "gen_batch": args.gen_batch, "in_process_threads": args.threads,
                  "load_average_start": LOAD_START},
        "arms": arms,
        "headline": headline,
        "load_average_end": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
