"""GPU smoke test: the project's own training, probing, evaluation and serving code on models of real shapes.

    python benchmarks/gpu_smoke.py [--quick] [--out benchmarks/results/gpu_smoke.json]
    nice -n 19 python benchmarks/gpu_smoke.py --cpu-dry-run     # tiny shapes, 2 steps: checks the script, no GPU

Not in CI: it needs one CUDA GPU (H100/H200-class; budget ≤ 8 min there) and refuses to run without one unless
--cpu-dry-run is given. Nothing is downloaded: the models are random-init with the public Qwen2.5-0.5B/1.5B shapes
(hidden size, layers, heads, KV heads, MLP width, vocab, tied embeddings; QKV biases) written below, in the Llama
architecture of toolace_r.models (Qwen2's own class would pull Qwen2's tokenizer class onto our locally trained
byte-level BPE: STACK.md). The tokenizer is trained here on the built-in pool (a few thousand entries), so token ids
use only the start of the 151 936-row embedding; compute and memory are those of the real shape.

What runs, all through the project's code paths:
- train: `toolace_r.train.train` (Ray Train TorchTrainer, 1 GPU worker, DeepSpeed ZeRO-2 and ZeRO-3, bf16) for 30
  optimizer steps per model and stage (--quick: the 0.5B model only, 10 steps); tokens/s from the run's own summary,
  MFU = tokens/s × FLOPs per token / the GPU's dense bf16 peak, peak memory = the worker's
  torch.cuda.max_memory_allocated (train summary `peak_gpu_bytes`);
- probe: `toolace_r.probe.ProbeActor` (what each Ray Data actor of `probe()` runs) on 64 pool samples × k = 8;
- eval: `toolace_r.evaluate.evaluate` in-process (eval.num_actors=0) on the built-in held-out set, 13 items of each
  of its 5 categories (eval.limit is per category: 65 items), adaptive refinement on;
- serve: 100 OpenAI chat-completion bodies through the replica's own path in-process — request validation
  (`ChatCompletionRequest`, `build_job`), `ServingModel.submit` (the continuous engine), `completion_response` — with
  up to 16 requests decoding at once; no HTTP (benchmarks/serve_load.py measures the HTTP side).
Probe, eval and serve run in this process, so their peak memory is torch.cuda.max_memory_allocated here, reset
before each. The plan column is `toolace-r plan`'s estimate (toolace_r.plan) for the same config, "–" where it
has none.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = f"{REPO}:{os.environ.get('PYTHONPATH', '')}"  # Ray workers import the project

# Public config.json figures of Qwen/Qwen2.5-0.5B and Qwen/Qwen2.5-1.5B.
SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
                         rms_norm_eps=1e-6, max_position_embeddings=32768),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
                         rms_norm_eps=1e-6, max_position_embeddings=32768),
    # --cpu-dry-run only: checks the script end to end in minutes on a CPU
    "dry-tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True, rope_theta=10000.0,
                     rms_norm_eps=1e-6, max_position_embeddings=2048),
}
# Dense bf16 tensor-core peaks (no sparsity), from NVIDIA's data sheets; matched against torch's device name.
BF16_PEAK_TFLOPS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0)]
TOKENIZER_VOCAB = 4096


def bf16_peak(name: str) -> float | None:
    for key, tflops in BF16_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return tflops * 1e12
    return None


def flops_per_token(shape: dict, seq_len: float) -> float:
    """Training FLOPs per token: 6 × (non-embedding weights + the LM head) + attention scores and values
    (12 × layers × hidden × mean sequence length, causal masking not discounted), no recomputation."""
    d, layers, kv = shape["hidden_size"], shape["num_hidden_layers"], shape["num_key_value_heads"]
    head = d // shape["num_attention_heads"]
    per_layer = d * d * 2 + d * kv * head * 2 + 3 * d * shape["intermediate_size"]  # q, o; k, v; gate, up, down
    dense = layers * per_layer + d * shape["vocab_size"]
    return 6 * dense + 12 * layers * d * seq_len


def build_model(out: Path, shape: dict, texts: list[str], device: str) -> int:
    """Random-init Llama-architecture model of `shape` with QKV biases (Qwen2's), our tokenizer, bf16 on GPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from toolace_r.models import train_tiny_tokenizer, write_meta

    tok = train_tiny_tokenizer(texts, TOKENIZER_VOCAB)
    config = LlamaConfig(**shape, attention_bias=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if device == "cuda" else torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    write_meta(out, prompt_style="compact")
    n = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return n


def plan_estimate(stage: str, model_dir: str, cfg) -> float | None:
    """`toolace-r plan`'s per-GPU peak estimate in bytes for `stage` (train | probe | eval | serve), from
    toolace_r.plan (model_shape from the model dir's config.json; the stage formulas at the prompt length the plan
    assumes, train.max_length); None — shown as "–" — when this checkout's toolace_r.plan lacks them."""
    try:
        from toolace_r.plan import estimate
        from toolace_r.plan.shapes import model_shape

        shape = model_shape(cfg, model_path=model_dir)
        if stage == "train":
            return float(estimate.train_stage(shape, cfg.train).peak)
        fn = {"probe": estimate.probe_stage, "eval": estimate.eval_stage, "serve": estimate.serve_stage}[stage]
        return float(fn(shape, cfg, cfg.train.max_length).peak)
    except Exception as err:  # noqa: BLE001 - an estimate it cannot make must not stop the smoke run
        print(f"   (no plan estimate for {stage}: {type(err).__name__}: {err})", flush=True)
        return None


class Gpu:
    """Peak-memory bookkeeping of this process (probe, eval, serve run here)."""

    def __init__(self, on_gpu: bool):
        self.on_gpu = on_gpu

    def reset(self) -> None:
        if self.on_gpu:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int:
        if not self.on_gpu:
            return 0
        import torch

        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())


def run_train(cfg, model_dir: str, rows: list[dict], out: Path, shape: dict, peak_flops: float | None) -> dict:
    from toolace_r.train import train

    from toolace_r.models import load_tokenizer
    from toolace_r.train import encode_row

    tokenizer = load_tokenizer(model_dir)  # mean row length, for the attention FLOPs: the rows as training cuts them
    lengths = [len(e["input_ids"]) for r in rows[:1000]
               if (e := encode_row(tokenizer, r["chat"], r["completion"], cfg.train.max_length))]
    seq = sum(lengths) / max(1, len(lengths))
    summary = train(cfg, model_dir, rows, str(out))
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
    # steady state: the first steps carry CUDA/NCCL warm-up and allocator growth
    steady = records[2:] or records
    tps = sum(r["tokens"] for r in steady) / max(1e-9, sum(r["step_s"] for r in steady))
    flops = flops_per_token(shape, seq)
    return {"steps": summary["steps"], "tokens_per_s": tps, "tokens_per_s_all_steps": summary["tokens_per_s"],
            "mean_row_tokens": seq, "flops_per_token": flops,
            "mfu": tps * flops / peak_flops if peak_flops else None, "peak_bytes": summary["peak_gpu_bytes"],
            "loss_first": summary["loss_first"], "loss_last": summary["loss_last"], "wall_s": summary["wall_s"]}


def run_probe(cfg, model_dir: str, samples, gpu: Gpu) -> dict:
    import pyarrow as pa

    from toolace_r.probe import ProbeActor

    pc = cfg.probe
    gen = dict(temperature=pc.generation.temperature, top_p=pc.generation.top_p,
               max_new_tokens=pc.generation.max_new_tokens, seed=pc.generation.seed)
    actor = ProbeActor(model_dir, "compact", pc.k, gen, decoder=pc.decoder, dtype=cfg.model.dtype)
    gpu.reset()
    start = time.perf_counter()
    table = actor(pa.Table.from_pylist([s.to_row() for s in samples]))
    wall = time.perf_counter() - start
    rows = table.to_pylist()
    tokens = sum(sum(r["n_tokens"]) for r in rows)
    return {"samples": len(rows), "k": pc.k, "wall_s": wall, "samples_per_s": len(rows) / wall,
            "generated_tokens": tokens, "tokens_per_s": tokens / wall, "peak_bytes": gpu.peak()}


def run_eval(cfg, model_dir: str, out: Path, gpu: Gpu) -> dict:
    from toolace_r.evaluate import evaluate

    gpu.reset()
    start = time.perf_counter()
    result = evaluate(cfg, model_dir, ["builtin"], str(out))
    wall = time.perf_counter() - start
    o = result["overall"]
    return {"items": o["n"], "wall_s": wall, "items_per_s": o["n"] / wall, "mean_rounds": o.get("mean_rounds"),
            "generated_tokens": o.get("tokens"), "peak_bytes": gpu.peak()}


def openai_bodies(samples, n: int, max_tokens: int) -> list[dict]:
    """Chat-completion bodies built from pool samples (tools as OpenAI functions, JSON Schema 'object')."""
    def schema(node):
        if isinstance(node, dict):
            return {k: ("object" if k == "type" and v == "dict" else schema(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [schema(v) for v in node]
        return node

    bodies = []
    for i in range(n):
        s = samples[i % len(samples)]
        tools = [{"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                                   "parameters": schema(t.get("parameters", {"type": "object"}))}}
                 for t in s.tools]
        messages = [{"role": m["role"], "content": m.get("content") or ""} for m in s.messages
                    if m["role"] in ("system", "user")]
        bodies.append({"model": "toolace-r", "messages": messages, "tools": tools, "max_tokens": max_tokens})
    return bodies


def run_serve(cfg, model_dir: str, samples, n_requests: int, gpu: Gpu) -> dict:
    from toolace_r.config import ServeConfig
    from toolace_r.serve.convert import build_job, completion_response
    from toolace_r.serve.model import ServingModel
    from toolace_r.serve.schema import ChatCompletionRequest

    scfg = ServeConfig(model=model_dir, max_batch_size=16, max_new_tokens=cfg.eval.generation.max_new_tokens,
                       max_rounds=cfg.eval.max_rounds)
    served = ServingModel.load(model_dir, dtype=cfg.model.dtype, max_rows=scfg.max_batch_size)
    bodies = openai_bodies(samples, n_requests, scfg.max_new_tokens)

    async def main() -> list[dict]:
        async def one(body: dict) -> dict:
            req = ChatCompletionRequest.model_validate(body, strict=True)
            job, mode, name = build_job(req, scfg, served)
            out = await asyncio.wrap_future(served.submit(job))  # as ToolaceServer.generate: the engine's thread
            return completion_response(out, job, mode, name, scfg.model_name, req.parallel_tool_calls)

        return await asyncio.gather(*(one(b) for b in bodies))

    gpu.reset()
    start = time.perf_counter()
    responses = asyncio.run(main())
    wall = time.perf_counter() - start
    completion = sum(r["usage"]["completion_tokens"] for r in responses)
    return {"requests": len(responses), "wall_s": wall, "requests_per_s": len(responses) / wall,
            "completion_tokens": completion, "tokens_per_s": completion / wall, "engine_steps": served.steps,
            "peak_bytes": gpu.peak()}


def gib(n: float | None) -> str:
    return "–" if not n else f"{n / 2**30:.2f} GiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the 0.5B model only, 10 steps (about 3 min on an H100)")
    ap.add_argument("--cpu-dry-run", action="store_true", help="tiny shapes, 2 steps, small probe/eval/serve, on CPU")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_smoke.json"))
    args = ap.parse_args()

    import torch

    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA GPU visible (torch.cuda.is_available() is False). This script measures training, "
              "probing, evaluation and serving on a GPU; run it on a GPU machine, or pass --cpu-dry-run to check the "
              "script itself on tiny shapes.", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    from toolace_r.config import BuiltinPoolConfig, load_config
    from toolace_r.data.pool import load_builtin, pool_texts
    from toolace_r.train import rows_from_samples

    device_name = "cpu (dry run)" if dry else torch.cuda.get_device_name(0)
    peak_flops = None if dry else bf16_peak(device_name)
    models = ["dry-tiny"] if dry else ["qwen2.5-0.5b"] if args.quick else ["qwen2.5-0.5b", "qwen2.5-1.5b"]
    steps = 2 if dry else 10 if args.quick else 30
    n_probe, k, n_eval, n_serve = (4, 2, 4, 6) if dry else (64, 8, 64, 100)
    gen_tokens = 16 if dry else 64
    train_pool, heldout = load_builtin(BuiltinPoolConfig(n_train=3000 if not dry else 200, n_heldout=max(n_eval, 8),
                                                         seed=0))
    rows = rows_from_samples(train_pool, "compact")
    common = [
        "model.prompt_style=compact", f"model.dtype={'float32' if dry else 'bfloat16'}",
        f"train.use_gpu={str(not dry).lower()}", "train.num_workers=1", f"train.cpus_per_worker={1 if dry else 4}",
        f"train.max_steps={steps}", "train.epochs=10", "train.checkpoint_every=0", "train.warmup_steps=2",
        "train.lr=1e-4", f"train.tokens_per_micro_batch={1024 if dry else 8192}", "train.max_length=1024",
        f"run.num_cpus={2 if dry else 0}",
        f"probe.k={k}", f"probe.generation.max_new_tokens={gen_tokens}",
        f"eval.generation.max_new_tokens={gen_tokens}", f"eval.limit={-(-n_eval // 5)}", "eval.num_actors=0",
        "eval.max_rounds=3", "eval.batch_size=64",
    ]
    results: dict = {"device": device_name, "bf16_peak_tflops": peak_flops and peak_flops / 1e12, "models": {}}
    t_all = time.perf_counter()
    gpu = Gpu(not dry)
    with tempfile.TemporaryDirectory(prefix="gpu_smoke_") as tmp:
        for name in models:
            shape = SHAPES[name]
            model_dir = Path(tmp) / name
            t0 = time.perf_counter()
            n_params = build_model(model_dir, shape, pool_texts(train_pool, "compact"), "cpu" if dry else "cuda")
            entry = results["models"][name] = {"params": n_params, "build_s": time.perf_counter() - t0, "train": {}}
            print(f"== {name}: {n_params / 1e6:.0f} M params, built in {entry['build_s']:.0f} s", flush=True)
            for zero in (2, 3):
                cfg = load_config(None, common + [f"train.zero_stage={zero}", f"run.dir={tmp}/run"])
                r = run_train(cfg, str(model_dir), rows, Path(tmp) / f"{name}-z{zero}", shape, peak_flops)
                r["plan_bytes"] = plan_estimate("train", str(model_dir), cfg)
                entry["train"][f"zero{zero}"] = r
                mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "–"
                print(f"   train ZeRO-{zero}: {r['steps']} steps, {r['tokens_per_s']:,.0f} tok/s, MFU {mfu}, "
                      f"peak {gib(r['peak_bytes'])} (plan {gib(r['plan_bytes'])}), loss {r['loss_first']:.2f} → "
                      f"{r['loss_last']:.2f}, {r['wall_s']:.0f} s with Ray Train start-up", flush=True)
        # probe, eval and serve on the largest model (random weights: every answer runs to max_new_tokens)
        cfg = load_config(None, common + [f"run.dir={tmp}/run"])
        name = models[-1]
        model_dir = str(Path(tmp) / name)
        entry = results["models"][name]
        entry["probe"] = run_probe(cfg, model_dir, train_pool[:n_probe], gpu)
        entry["probe"]["plan_bytes"] = plan_estimate("probe", model_dir, cfg)
        p = entry["probe"]
        print(f"   probe: {p['samples']} samples × k={p['k']} in {p['wall_s']:.1f} s, {p['tokens_per_s']:,.0f} "
              f"generated tok/s, peak {gib(p['peak_bytes'])} (plan {gib(p['plan_bytes'])})", flush=True)
        entry["eval"] = run_eval(cfg, model_dir, Path(tmp) / "eval", gpu)
        entry["eval"]["plan_bytes"] = plan_estimate("eval", model_dir, cfg)
        e = entry["eval"]
        print(f"   eval: {e['items']} items in {e['wall_s']:.1f} s, mean rounds {e['mean_rounds']}, "
              f"peak {gib(e['peak_bytes'])} (plan {gib(e['plan_bytes'])})", flush=True)
        entry["serve"] = run_serve(cfg, model_dir, heldout, n_serve, gpu)
        entry["serve"]["plan_bytes"] = plan_estimate("serve", model_dir, cfg)
        s = entry["serve"]
        print(f"   serve: {s['requests']} requests in {s['wall_s']:.1f} s ({s['requests_per_s']:.1f} req/s, "
              f"{s['engine_steps']} engine steps), {s['tokens_per_s']:,.0f} completion tok/s, peak {gib(s['peak_bytes'])} "
              f"(plan {gib(s['plan_bytes'])})", flush=True)
    results["wall_s"] = time.perf_counter() - t_all
    print(f"total {results['wall_s']:.0f} s on {device_name}")
    if not dry:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {args.out}")
    else:
        print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
