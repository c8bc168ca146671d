"""Probe throughput: the decoding engine vs batched `generate`, and Ray Data vs two bare processes (issue 17, item 4).

    python benchmarks/probe_throughput.py [--quick] [--out FILE] [--model DIR] [--samples N]

Same model, same prompts, same sampling in every arm: jobs/demo.yaml's probe (k = 3, temperature 0.7, top_p 0.95,
max_new_tokens 80, probe.decoder), every answer parsed and judged by toolace_r.calls.check, torch pinned to 1 thread
in every process. The model: `--model DIR`, else the demo's trained model (benchmarks/demo_items.demo_model: this checkout's
`make demo` final model, else a demo run elsewhere on this machine; answers end at EOS after ~35 tokens), else a tiny random-init Llama built
here (its answers run to max_new_tokens); the JSON says which. The pool: the dev split (200, carved as the driver
does) and the 500 held-out test samples of the demo's built-in pool, interleaved, first FULL_POOL of them (4 Ray
batches of probe.batch_size = 128: 2 per actor), rendered in the model's own prompt style (its toolace_r.json).

Arms:
- `batched_generate_B{8,16,32}`: the baseline a competent user writes: prompts sorted by length, batches of B, left
  padding, one `model.generate(..., do_sample=True, num_return_sequences=k)` per batch (default dynamic cache). The
  best B is the baseline.
- `engine_kv{G}`: toolace_r.generation.Generator in this process, one `generate` call per probe.batch_size samples
  (what a ProbeActor gets per call), engine.kv_cache_gb = G; the best G is `engine`, and the bare processes and the
  Ray actors run with it. `engine_default_budget` (full run): the same with engine.kv_cache_gb = 0 (2 GiB on CPU).
- `bare_2proc`: two spawned processes (multiprocessing, no Ray), each loading the model and running the engine on
  one contiguous half of the pool, side by side; samples/s = pool / wall from starting the processes to the slower
  one's last verdict. Process start, imports and model load are inside the timing, as the Ray arm's are.
- `ray_2x1`: toolace_r.probe.probe with probe.num_actors = 2, cpus_per_actor = 1, probe.batch_size 128, on a local
  Ray with jobs/demo.yaml's run.num_cpus (3 logical CPUs) started before the timing (a run's driver starts it long
  before it probes); actor start-up, model load, Ray Data's planning and the parquet write are inside the timing.
  Run twice (before and after bare_2proc); the headline takes the mean.
- `ray_fixed` / `ray_fixed_cold`: the same probe on 2 samples in batches of 1 (one per actor): what a probe costs
  before it decodes anything (F), warm (after other probes in the session) and cold (the session's first probe).
- full run: `ray_2x1_poolN` / `bare_2proc_poolN` on the first SCALE_POOL samples of the demo's training pool (what
  each demo iteration probes).

In-process arms start their clock after the model is loaded; the load (L) is reported apart.

Headline: speedup_vs_batched_generate = engine ÷ best batched_generate (samples/s); scale_out_efficiency =
ray_2x1 ÷ bare_2proc (samples/s) on the largest pool measured (`scale_out_pool_size`: the demo's training pool in a full
run, what each probe stage gets; every pool's figure is in `scale_out_efficiency_poolN`); payback_pool_size: the pool at which Ray on 2 actors catches up with the in-process
engine on 1 thread, both paying their start-up: F + N / r_ray = L + N / r_engine, with r_ray = N_ray / (wall_ray − F)
(Ray's steady rate) → N* = (F − L) / (1 / r_engine − 1 / r_ray).

`--quick` (≤ 3 min): B = QUICK_B and engine.kv_cache_gb = QUICK_KV only (the full run's best), both on the pool's
first half; one ray_2x1 run and no large pool, on QUICK_POOL samples: at or above the full run's pay-back size; the
run computes its own pay-back size and says whether its pool reaches it.
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
import zlib
from pathlib import Path

LOAD_START = os.getloadavg()
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ["PYTHONPATH"] = f"{REPO}:{os.environ.get('PYTHONPATH', '')}"  # Ray workers import the project

DEMO_CONFIG = REPO / "jobs" / "demo.yaml"
FULL_POOL = 512  # of the 700 dev + test samples: 4 Ray batches of probe.batch_size 128, 2 per actor
FULL_BATCHES = (8, 16, 32)
FULL_KV = (0.04, 0.08)
SCALE_POOL = 2304  # the demo probes its 2 300-sample training pool each iteration: 18 batches of 128
QUICK_B = 8
QUICK_KV = 0.08
QUICK_POOL = 512  # >= the pay-back size (219 in the full run, 306 in a quick run on 256 samples, 2026-12-02); 2 batches per actor


def demo_config():
    from toolace_r.config import load_config

    return load_config(DEMO_CONFIG)


def pick_model(arg: str | None, work: Path, cfg) -> tuple[str, str]:
    """(model dir, what it is)."""
    if arg:
        return arg, f"--model {arg}"
    from demo_items import demo_model

    path = demo_model()
    if path:
        return path, f"the demo's trained model ({path})"
    from toolace_r.config import TinyModelConfig
    from toolace_r.data.pool import load_builtin, pool_texts
    from toolace_r.models import build_tiny_model

    train, _ = load_builtin(cfg.pool.builtin)
    out = work / "tiny"
    build_tiny_model(out, pool_texts(train[:1000], cfg.model.prompt_style), TinyModelConfig(), cfg.model.prompt_style)
    return str(out), "a tiny Llama built here (hidden 128 x 4 layers, vocab 2048, random init: answers run to " \
                     "max_new_tokens)"


def load_pool(cfg, n: int | None):
    """Dev split + held-out test split of the demo's built-in pool, interleaved (dev, test, dev, test, ...)."""
    from toolace_r.data.pool import load_builtin, split_dev

    train, test = load_builtin(cfg.pool.builtin)
    _, dev = split_dev(train, cfg.pool.dev_size, cfg.pool.dev_seed)
    pool, i = [], 0
    while i < max(len(dev), len(test)):
        pool += [x[i] for x in (dev, test) if i < len(x)]
        i += 1
    return pool[:n] if n else pool


def load_train_pool(cfg, n: int):
    """The first `n` samples of the pool the demo probes (its built-in training pool, dev split removed)."""
    from toolace_r.data.pool import load_builtin, split_dev

    train, _ = load_builtin(cfg.pool.builtin)
    return split_dev(train, cfg.pool.dev_size, cfg.pool.dev_seed)[0][:n]


def seeds_for(samples, seed: int) -> list[int]:
    """The probe's per-sample seeds (ProbeActor.probe_batch): the engine arms draw the same answers as Ray's."""
    return [seed + zlib.crc32(s.id.encode("utf-8")) for s in samples]


def judge(samples, texts_per_sample, decoder: str) -> int:
    from toolace_r.calls import check

    return sum(bool(check(t, s.tools, s.truth, s.category, decoder).valid)
               for s, texts in zip(samples, texts_per_sample) for t in texts)


# --- arms ------------------------------------------------------------------------------------------------------------
def run_batched_generate(model, tok, prompts, samples, gen: dict, k: int, batch: int, decoder: str,
                         stop: set[int]) -> dict:
    """Length-sorted batches of `batch` prompts, left padding, one generate(num_return_sequences=k) per batch."""
    import torch

    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(stop)
    encoded = tok(list(prompts), add_special_tokens=False)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    texts: list[list[str]] = [[] for _ in prompts]
    tokens = 0
    torch.manual_seed(0)
    start = time.perf_counter()
    cpu = time.process_time()
    for b in range(0, len(order), batch):
        idx = order[b:b + batch]
        inputs = tok.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=True, temperature=gen["temperature"], top_p=gen["top_p"],
                                 max_new_tokens=gen["max_new_tokens"], num_return_sequences=k, pad_token_id=pad,
                                 eos_token_id=sorted(stop))
        width = inputs["input_ids"].shape[1]
        for r, row in enumerate(out[:, width:].tolist()):
            end = next((j for j, t in enumerate(row) if t in stop), len(row))
            tokens += end
            texts[idx[r // k]].append(tok.decode(row[:end], skip_special_tokens=True).strip())
    n_correct = judge(samples, texts, decoder)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "cpu_s": round(time.process_time() - cpu, 2), "tokens": tokens,
            "answers": len(prompts) * k, "n_correct": n_correct, "batch": batch}


def engine_generator(model, tok, kv_cache_gb: float):
    """A Generator whose engine has `kv_cache_gb` GiB of KV cache (0: the engine's default), as ProbeActor sets it."""
    from toolace_r.engine import default_kv_cache_tokens
    from toolace_r.generation import Generator

    return Generator(model, tok, kv_cache_tokens=default_kv_cache_tokens(model, kv_cache_gb))


def run_engine(generator, prompts, samples, gen: dict, k: int, decoder: str, chunk: int) -> dict:
    """One Generator.generate per `chunk` samples (probe.batch_size: what a ProbeActor gets per call), then check."""
    import resource

    passes0 = sum(s.forward_passes for s in generator.engine.stats.values())
    start = time.perf_counter()
    cpu = time.process_time()
    answers = []
    for b in range(0, len(prompts), chunk):
        answers += generator.generate(prompts[b:b + chunk], n=k, temperature=gen["temperature"], top_p=gen["top_p"],
                                      max_new_tokens=gen["max_new_tokens"],
                                      seed=seeds_for(samples[b:b + chunk], gen["seed"]))
    n_correct = judge(samples, [[a.text for a in ans] for ans in answers], decoder)
    wall = time.perf_counter() - start
    passes = sum(s.forward_passes for s in generator.engine.stats.values()) - passes0
    return {"wall_s": wall, "cpu_s": round(time.process_time() - cpu, 2),
            "tokens": sum(a.n_tokens for ans in answers for a in ans), "answers": len(prompts) * k,
            "n_correct": n_correct, "kv_cache_tokens": generator.engine.kv_cache_tokens, "forward_passes": passes,
            "samples_per_generate_call": chunk,
            "max_rss_mb_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def _bare_worker(model_dir: str, style: str, rows: list[dict], gen: dict, k: int, decoder: str, kv_cache_gb: float,
                 chunk: int, t0: float, queue) -> None:
    """One bare process: pin 1 thread, load the model, probe its half with the engine, report."""
    from toolace_r.generation import pin_torch_threads

    pin_torch_threads(1)
    from toolace_r.data.prompts import render_prompt
    from toolace_r.data.schema import Sample
    from toolace_r.generation import Generator

    samples = [Sample.from_row(r) for r in rows]
    loaded_model = Generator.from_path(model_dir)
    generator = engine_generator(loaded_model.model, loaded_model.tokenizer, kv_cache_gb)
    loaded = time.time()
    prompts = [render_prompt(generator.tokenizer, s.tools, s.messages, style) for s in samples]
    result = run_engine(generator, prompts, samples, gen, k, decoder, chunk)
    result.update(start_s=loaded - t0, end_s=time.time() - t0, samples=len(samples))
    queue.put(result)


def run_bare(model_dir: str, style: str, samples, gen: dict, k: int, decoder: str, kv_cache_gb: float, chunk: int,
             procs: int = 2) -> dict:
    """`procs` spawned processes, process i probing the i-th contiguous share of the pool."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    size = -(-len(samples) // procs)
    halves = [samples[i * size:(i + 1) * size] for i in range(procs)]
    start = time.perf_counter()
    t0 = time.time()
    workers = [ctx.Process(target=_bare_worker, args=(model_dir, style, [s.to_row() for s in half], gen, k, decoder,
                                                       kv_cache_gb, chunk, t0, queue)) for half in halves]
    for w in workers:
        w.start()
    parts = [queue.get() for _ in workers]
    wall = time.perf_counter() - start
    for w in workers:
        w.join()
    return {"wall_s": wall, "tokens": sum(p["tokens"] for p in parts), "answers": sum(p["answers"] for p in parts),
            "n_correct": sum(p["n_correct"] for p in parts),
            "processes": [{"samples": p["samples"], "start_up_s": round(p["start_s"], 2),
                           "decode_and_check_s": round(p["wall_s"], 2), "cpu_s": p["cpu_s"],
                           "finished_at_s": round(p["end_s"], 2), "max_rss_mb": p["max_rss_mb_process"]}
                          for p in parts]}


def run_ray(cfg, model_dir: str, samples, out_dir: Path, batch_size: int | None = None) -> dict:
    from toolace_r.probe import SUMMARY_FILE, probe

    if batch_size:
        cfg.probe.batch_size = batch_size
    start = time.perf_counter()
    path = probe(cfg, model_dir, samples, out_dir)
    wall = time.perf_counter() - start
    summary = json.loads((Path(path) / SUMMARY_FILE).read_text())
    return {"wall_s": wall, "tokens": summary["generated_tokens"], "answers": summary["answers"],
            "n_correct": round(summary["mean_pass_rate"] * summary["answers"]), "batch_size": cfg.probe.batch_size,
            "batches": -(-len(samples) // cfg.probe.batch_size)}


# --- main ------------------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"one batched_generate B, pool of {QUICK_POOL} (<= 3 min)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "probe_throughput.json"))
    ap.add_argument("--model", help="model dir (default: the demo's trained model, else a tiny one built here)")
    ap.add_argument("--samples", type=int, help=f"pool size (default {FULL_POOL}; quick {QUICK_POOL})")
    ap.add_argument("--batches", default="", help="batched_generate B values, comma-separated "
                    f"(default {','.join(map(str, FULL_BATCHES))}; quick {QUICK_B})")
    ap.add_argument("--kv", default="", help="engine.kv_cache_gb values for the engine arms, comma-separated "
                    f"(default {','.join(map(str, FULL_KV))}; quick {QUICK_KV}); the best one is used by bare and Ray")
    ap.add_argument("--scale-pool", type=int, default=SCALE_POOL,
                    help="full run: ray_2x1 and bare_2proc again on this many samples of the demo's training pool "
                         "(0: skip)")
    ap.add_argument("--arms", default="generate,engine,bare,ray", help="arms to run (development)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from toolace_r.generation import pin_torch_threads

    pin_torch_threads(1)
    from toolace_r import ray_session
    from toolace_r.data.prompts import render_prompt
    from toolace_r.generation import Generator
    from toolace_r.models import prompt_style_for

    cfg = demo_config()
    pc = cfg.probe
    k = pc.k
    gen = {"temperature": pc.generation.temperature, "top_p": pc.generation.top_p,
           "max_new_tokens": pc.generation.max_new_tokens, "seed": pc.generation.seed}
    decoder = pc.decoder
    work = Path(tempfile.mkdtemp(prefix="probe_bench_"))
    model_dir, model_note = pick_model(args.model, work, cfg)
    style = prompt_style_for(cfg, model_dir)
    cfg.model.prompt_style = style
    n = args.samples or (QUICK_POOL if args.quick else FULL_POOL)
    samples = load_pool(cfg, n)
    n = len(samples)
    batches = [int(b) for b in args.batches.split(",") if b] or ([QUICK_B] if args.quick else list(FULL_BATCHES))
    kv_values = [float(x) for x in args.kv.split(",") if x] or ([QUICK_KV] if args.quick else list(FULL_KV))
    arms_wanted = set(args.arms.split(","))

    t = time.perf_counter()
    generator = Generator.from_path(model_dir)
    load_s = time.perf_counter() - t
    model, tok = generator.model, generator.tokenizer
    prompts = [render_prompt(tok, s.tools, s.messages, style) for s in samples]
    lengths = [len(x) for x in tok(prompts, add_special_tokens=False)["input_ids"]]
    print(f"model: {model_note}, style {style}; pool {n} samples (dev + test) x k={k}, T={gen['temperature']}, "
          f"top_p={gen['top_p']}, max_new_tokens {gen['max_new_tokens']}; prompts {min(lengths)}-{max(lengths)} "
          f"tokens (mean {sum(lengths) / n:.0f}); {os.cpu_count()} CPUs, load average {LOAD_START[0]:.1f}; "
          f"1 torch thread per process; in-process model load {load_s:.2f} s", flush=True)

    arms: dict[str, dict] = {}

    def record(name: str, result: dict, pool: int = n) -> None:
        result["samples"] = pool
        result["samples_per_s"] = round(pool / result["wall_s"], 3)
        result["tokens_per_s"] = round(result["tokens"] / result["wall_s"], 1)
        result["pass_rate"] = round(result["n_correct"] / max(1, result["answers"]), 4)
        result["wall_s"] = round(result["wall_s"], 2)
        result["load_average"] = round(os.getloadavg()[0], 2)
        arms[name] = result
        print(f"  {name:22s} {pool:5d} samples {result['wall_s']:8.1f}s {result['samples_per_s']:9.2f} samples/s "
              f"{result['tokens_per_s']:9.0f} tokens/s  pass {result['pass_rate']:.3f}  "
              f"(load {result['load_average']})", flush=True)

    if "ray" in arms_wanted:
        cfg.run.dir = str(work / "run")
        # jobs/demo.yaml's run.num_cpus (3 logical CPUs on the 2 cores): 2 for the actors, and one for Ray Data's
        # parquet write tasks; with only 2 they wait for an actor to leave (~2.5 s more per probe, measured)
        pc.num_actors, pc.cpus_per_actor, pc.gpus_per_actor = 2, 1.0, 0.0
        ray_session.start_or_join(cfg)  # before the timing, as a run's driver starts Ray long before it probes
    chunk = pc.batch_size  # samples per generate call in every engine arm, as a ProbeActor gets them

    # 1. the in-process arms (model loaded before the timing); --quick: on the pool's first half, both of them (their
    #    ratio is the headline, a rate per sample; the scale-out arms below need the whole pool, past its pay-back)
    m = n // 2 if args.quick else n
    if "engine" in arms_wanted:
        for gb in kv_values:
            record(f"engine_kv{gb:g}", run_engine(engine_generator(model, tok, gb), prompts[:m], samples[:m], gen, k,
                                                  decoder, chunk), pool=m)
    if "generate" in arms_wanted:
        for b in batches:
            record(f"batched_generate_B{b}", run_batched_generate(model, tok, prompts[:m], samples[:m], gen, k, b,
                                                                  decoder, generator.stop_ids), pool=m)
    engines = {a: r for a, r in arms.items() if a.startswith("engine_kv")}
    kv_best = float(max(engines, key=lambda a: engines[a]["samples_per_s"])[len("engine_kv"):]) if engines \
        else kv_values[0]
    cfg.engine.kv_cache_gb = kv_best  # the Ray actors' engines (ProbeActor) and the bare processes' get the same
    # 2. scale-out: Ray's fixed cost (cold: the session's first probe; warm: as every later one), Ray on 2 actors,
    #    two bare processes, Ray again
    if "ray" in arms_wanted:
        record("ray_fixed_cold", run_ray(cfg, model_dir, samples[:2], work / "p0", batch_size=1), pool=2)
        record("ray_2x1", run_ray(cfg, model_dir, samples, work / "p1", batch_size=chunk))
    if "bare" in arms_wanted:
        record("bare_2proc", run_bare(model_dir, style, samples, gen, k, decoder, kv_best, chunk))
    if "ray" in arms_wanted and not args.quick:
        record("ray_2x1_again", run_ray(cfg, model_dir, samples, work / "p2", batch_size=chunk))
    if "ray" in arms_wanted:
        record("ray_fixed", run_ray(cfg, model_dir, samples[:2], work / "p3", batch_size=1), pool=2)
    # 3. the same pair on a pool of the demo's probe size (its training pool: what each iteration probes)
    scale_n = 0 if args.quick else args.scale_pool
    if scale_n and {"ray", "bare"} <= arms_wanted:
        big = load_train_pool(cfg, scale_n)
        record(f"ray_2x1_pool{len(big)}", run_ray(cfg, model_dir, big, work / "p4", batch_size=chunk), pool=len(big))
        record(f"bare_2proc_pool{len(big)}", run_bare(model_dir, style, big, gen, k, decoder, kv_best, chunk),
               pool=len(big))
    if "ray" in arms_wanted:
        import ray

        ray.shutdown()
    # 4. for the record: the engine with its default budget (engine.kv_cache_gb = 0: 2 GiB on CPU)
    if "engine" in arms_wanted and not args.quick:
        record("engine_default_budget", run_engine(engine_generator(model, tok, 0.0), prompts, samples, gen, k,
                                                   decoder, chunk))

    headline: dict = {"pool_size": n}
    gens = {a: r for a, r in arms.items() if a.startswith("batched_generate_B")}
    best = max(gens, key=lambda a: gens[a]["samples_per_s"]) if gens else None
    if best:
        headline["batched_generate_best_B"] = gens[best]["batch"]
        headline["batched_generate_samples_per_s"] = gens[best]["samples_per_s"]
        headline["batched_generate_tokens_per_s"] = gens[best]["tokens_per_s"]
    if engines:
        eng = arms[f"engine_kv{kv_best:g}"]
        headline["engine_kv_cache_gb"] = kv_best
        headline["engine_samples_per_s"] = eng["samples_per_s"]
        headline["engine_tokens_per_s"] = eng["tokens_per_s"]  # the box's speed in this run, 1 thread
    if best and engines:
        headline["speedup_vs_batched_generate"] = round(eng["samples_per_s"] / gens[best]["samples_per_s"], 2)
    rays = [a for a in ("ray_2x1", "ray_2x1_again") if a in arms]
    if rays and "bare_2proc" in arms:
        ray_rate = sum(arms[a]["samples_per_s"] for a in rays) / len(rays)
        headline["ray_2x1_samples_per_s"] = round(ray_rate, 3)  # mean of its runs
        headline["ray_2x1_runs_samples_per_s"] = [arms[a]["samples_per_s"] for a in rays]
        headline["bare_2proc_samples_per_s"] = arms["bare_2proc"]["samples_per_s"]
        headline["scale_out_efficiency"] = round(ray_rate / arms["bare_2proc"]["samples_per_s"], 3)
    fixeds = [arms[a]["wall_s"] for a in ("ray_fixed",) if a in arms]
    if rays and fixeds and engines:
        fixed = sum(fixeds) / len(fixeds)
        ray_wall = sum(arms[a]["wall_s"] for a in rays) / len(rays)
        r_ray = n / max(1e-9, ray_wall - fixed)
        r_eng = eng["samples_per_s"]
        gap = 1 / r_eng - 1 / r_ray
        payback = (fixed - load_s) / gap if gap > 0 else None
        headline.update(ray_fixed_cost_s=round(fixed, 2), in_process_load_s=round(load_s, 2),
                        ray_steady_samples_per_s=round(r_ray, 2),
                        payback_pool_size=None if payback is None else int(payback + 0.999),
                        pool_at_or_above_payback=payback is not None and n >= payback)
    bigs = [a[len("ray_2x1_pool"):] for a in arms if a.startswith("ray_2x1_pool")]
    for size in bigs:
        if f"bare_2proc_pool{size}" in arms:
            headline[f"scale_out_efficiency_pool{size}"] = round(
                arms[f"ray_2x1_pool{size}"]["samples_per_s"] / arms[f"bare_2proc_pool{size}"]["samples_per_s"], 3)
    if "scale_out_efficiency" in headline:
        # the headline is measured on the largest pool, in a full run the one a probe stage really gets (the demo's
        # training pool): a small pool's figure says mostly what start-up costs, which payback_pool_size says better
        pools = {n: headline["scale_out_efficiency"]}
        pools.update({int(b): headline[f"scale_out_efficiency_pool{b}"] for b in bigs
                      if f"scale_out_efficiency_pool{b}" in headline})  # a dedicated run of size n wins
        for size, value in pools.items():
            headline[f"scale_out_efficiency_pool{size}"] = value
        headline["scale_out_pool_size"] = max(pools)
        headline["scale_out_efficiency"] = pools[max(pools)]
    print("\n| arm | samples | wall s | samples/s | tokens/s | pass rate |\n|---|---:|---:|---:|---:|---:|")
    for name, r in arms.items():
        if "wall_s" in r:
            print(f"| {name} | {r['samples']} | {r['wall_s']} | {r['samples_per_s']} | {r['tokens_per_s']} | "
                  f"{r['pass_rate']} |")
    print("\nheadline:", json.dumps(headline))
    if args.quick and headline.get("payback_pool_size") and not headline.get("pool_at_or_above_payback"):
        print(f"NOTE: the quick pool ({n}) is below this run's pay-back size ({headline['payback_pool_size']}): "
              "Ray's start-up is not paid back at this size", flush=True)
    result = {
        "benchmark": "probe_throughput",
        "command": " ".join(["python", "benchmarks/probe_throughput.py"] + sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU (shared with other jobs)",
        "setup": {"model": model_note, "model_dir": model_dir, "prompt_style": style, "samples": n,
                  "pool": "dev split + held-out test of jobs/demo.yaml's built-in pool, interleaved",
                  "prompt_tokens": {"min": min(lengths), "max": max(lengths), "mean": round(sum(lengths) / n, 1)},
                  "k": k, **gen, "decoder": decoder, "torch_threads_per_process": 1,
                  "samples_per_generate_call": chunk, "engine_kv_cache_gb": kv_values,
                  "batched_generate_B": batches, "quick": args.quick,
                  "timing": "in-process arms: after model load; bare_2proc and ray_2x1: process/actor start-up and "
                            "model load included (Ray itself started before)",
                  "load_average_start": LOAD_START, "torch": torch.__version__},
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
