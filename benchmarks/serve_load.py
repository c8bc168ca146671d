"""Load test of the OpenAI-compatible server: does batching inside a replica pay off?

One replica (min = max = 1, so autoscaling does not blur the comparison) serves the same model twice: with
`serve.batching=true` (concurrent requests share forward passes: the replica's batch queue + batched adaptive
refinement) and with `serve.batching=false` (one request per model call). At concurrency 1, 4 and 16, closed-loop
clients send requests through the official `openai` client (or `--client raw`); we report requests/s, p50/p99
latency and the mean number of refinement rounds the server reports. Headline: `batching_speedup` = requests/s
with / without batching at concurrency 16.

    python benchmarks/serve_load.py [--quick] [--model DIR | --model-size tiny|small] [--client openai|raw] [--out FILE]

Without --model it serves tests/serve_model.py's tiny model that has memorised a few tool-calling dialogues, so the
answers are real calls and refinement stops at round 2 like a trained model's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # for replicas

from tqdm import tqdm  # noqa: E402

from serve_model import EXAMPLES, calling_model  # noqa: E402

CONCURRENCY = (1, 4, 16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openai_messages(messages: list[dict]) -> list[dict]:
    """Sample-style history → OpenAI wire format (assistant calls with JSON-string arguments)."""
    out = []
    for i, m in enumerate(messages):
        if m.get("tool_calls"):
            calls = [{"id": f"call_{i}_{j}", "type": "function",
                      "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                     for j, c in enumerate(m["tool_calls"])]
            out.append({"role": "assistant", "content": m.get("content") or None, "tool_calls": calls})
        elif m["role"] == "tool":
            out.append({"role": "tool", "tool_call_id": f"call_{i - 1}_0", "content": m["content"]})
        else:
            out.append(m)
    return out


class RawClient:
    """A load generator lighter than the openai client: one keep-alive `requests` session per thread, the same JSON
    body on the wire, the response read with `json`. On a 2-core machine that also runs the proxy and the replica,
    the openai client's own CPU per request (request building, pydantic parsing) is a large share of the total."""

    def __init__(self, base_url: str):
        self.url = base_url + "/chat/completions"
        self.local = threading.local()

    def ask(self, tools: list[dict], messages: list[dict], max_rounds: int) -> int:
        """Send one request; return the refinement rounds the server reports."""
        import requests

        session = getattr(self.local, "session", None) or requests.Session()
        self.local.session = session
        resp = session.post(self.url, json={"model": "toolace-r", "messages": messages, "tools": tools,
                                            "max_refine_rounds": max_rounds}, timeout=600)
        resp.raise_for_status()
        return resp.json()["toolace_r"]["refinement_rounds"]


class OpenAIClient:
    """The official `openai` client, as agents use it."""

    def __init__(self, base_url: str):
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key="-", max_retries=0, timeout=600)

    def ask(self, tools: list[dict], messages: list[dict], max_rounds: int) -> int:
        resp = self.client.chat.completions.create(model="toolace-r", messages=messages, tools=tools,
                                                   extra_body={"max_refine_rounds": max_rounds})
        return resp.model_extra["toolace_r"]["refinement_rounds"]


def level(client: RawClient | OpenAIClient, n_requests: int, concurrency: int, max_rounds: int) -> dict:
    """Closed loop: `concurrency` clients, `n_requests` in all. Latencies per request, wall time for all."""
    bodies = [(tools, openai_messages(msgs)) for tools, msgs, _ in EXAMPLES]

    def one(i: int) -> tuple[float, int]:
        tools, messages = bodies[i % len(bodies)]
        start = time.perf_counter()
        rounds = client.ask(tools, messages, max_rounds)
        return time.perf_counter() - start, rounds

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(tqdm(pool.map(one, range(n_requests)), total=n_requests, leave=False,
                            desc=f"concurrency {concurrency}"))
    wall = time.perf_counter() - start
    return {"concurrency": concurrency, "wall_s": wall, "latencies": [r[0] for r in results],
            "rounds": [r[1] for r in results]}


def model_calls(port: int, batching: bool) -> int:
    """Batches the (single) replica of a variant has run so far, from its /health route."""
    import requests

    name = "batching" if batching else "no_batching"
    return requests.get(f"http://127.0.0.1:{port}/{name}/health", timeout=60).json()["batches"]


def merge(parts: list[dict]) -> dict:
    """Alternating runs of one variant → requests/s over their summed wall time, latency percentiles over all."""
    lat = sorted(x for p in parts for x in p["latencies"])
    rounds = [x for p in parts for x in p["rounds"]]
    return {
        "concurrency": parts[0]["concurrency"],
        "requests": len(lat),
        "requests_per_s": len(lat) / sum(p["wall_s"] for p in parts),
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))],
        "mean_rounds": statistics.fmean(rounds),
    }


def engine_speedup(model_dir: str, max_rounds: int, repeats: int = 2) -> dict:
    """The model side alone, in this process (1 thread, like a 1-CPU replica): 16 requests answered as one
    adaptive_refine batch vs one at a time. The gap to the end-to-end ratio is what HTTP + Serve cost per request."""
    import torch

    from serve_model import _project_tools
    from toolace_r.serve.engine import Engine, Job

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = Engine.load(model_dir, dtype="float32")
        jobs = ([Job(_project_tools(t), m, max_rounds, 256, 0.0) for t, m, _ in EXAMPLES] * 4)[:16]
        engine.run(jobs[:2])
        single = batched = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            for job in jobs:
                engine.run([job])
            single += time.perf_counter() - start
            start = time.perf_counter()
            engine.run(jobs)
            batched += time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    n = repeats * len(jobs)
    return {"ms_per_request_single": 1000 * single / n, "ms_per_request_batch16": 1000 * batched / n,
            "speedup": single / batched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per level (≤ 3 min)")
    parser.add_argument("--model", help="model dir to serve (default: the tiny memorising test model)")
    parser.add_argument("--max-rounds", type=int, default=3, help="max_refine_rounds sent with every request")
    parser.add_argument("--batch-wait", type=float, default=None,
                        help="serve.batch_wait_timeout_s for the batching variant (default: the config's)")
    parser.add_argument("--model-size", choices=["tiny", "small"], default="tiny",
                        help="without --model: the memorising test model's size (serve_model.SHAPES)")
    parser.add_argument("--client", choices=["openai", "raw"], default="openai",
                        help="load generator: the official openai client, or plain keep-alive HTTP (RawClient)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serve_load.json"))
    args = parser.parse_args()

    import ray
    from ray import serve

    from toolace_r.config import load_config
    from toolace_r.serve.app import build_application

    model_dir = args.model or str(calling_model(size=args.model_size))
    engine = engine_speedup(model_dir, args.max_rounds)
    print(f"engine alone: {engine['ms_per_request_single']:.0f} ms/request one at a time, "
          f"{engine['ms_per_request_batch16']:.0f} ms/request in a batch of 16 ({engine['speedup']:.2f}x)", flush=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # Both variants run side by side (one replica each, 1 CPU each) and are measured in alternation, so that load
    # from other processes on the machine hits both alike.
    clients = {}
    for batching in (True, False):
        name = "batching" if batching else "no_batching"
        overrides = [f"serve.model={model_dir}", f"serve.batching={str(batching).lower()}", "serve.num_cpus=1",
                     "serve.min_replicas=1", "serve.max_replicas=1", "serve.max_ongoing_requests=32",
                     "serve.max_batch_size=16"]
        if batching and args.batch_wait is not None:
            overrides.append(f"serve.batch_wait_timeout_s={args.batch_wait}")
        serve.run(build_application(load_config(None, overrides)), name=name, route_prefix=f"/{name}",
                  blocking=False)
        base_url = f"http://127.0.0.1:{port}/{name}/v1"
        clients[batching] = RawClient(base_url) if args.client == "raw" else OpenAIClient(base_url)
        level(clients[batching], 4, 2, args.max_rounds)  # warm-up: first forward passes, lazy imports
    rows = []
    repeats = 2
    try:
        for c in CONCURRENCY:
            n = (4 * c + 8) if args.quick else max(32, 8 * c)
            parts: dict[bool, list[dict]] = {True: [], False: []}
            batches = {True: 0, False: 0}
            for _ in range(repeats):
                for batching in (True, False):
                    before = model_calls(port, batching)
                    parts[batching].append(level(clients[batching], n // repeats, c, args.max_rounds))
                    batches[batching] += model_calls(port, batching) - before
            for batching in (True, False):
                row = {"batching": batching, **merge(parts[batching])}
                row["mean_batch_size"] = row["requests"] / max(1, batches[batching])
                rows.append(row)
                print(f"batching={batching!s:5} c={c:2d}: {row['requests_per_s']:6.2f} req/s  "
                      f"p50 {row['p50_ms']:7.0f} ms  p99 {row['p99_ms']:7.0f} ms  rounds {row['mean_rounds']:.2f}  "
                      f"batch {row['mean_batch_size']:.1f}",
                      flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()

    def rps(batching: bool, c: int) -> float:
        return next(r["requests_per_s"] for r in rows if r["batching"] == batching and r["concurrency"] == c)

    headline = {
        "batching_speedup": rps(True, 16) / rps(False, 16),
        "rps_c16_batching": rps(True, 16),
        "rps_c16_no_batching": rps(False, 16),
        "rps_c1_batching": rps(True, 1),
        "mean_rounds": statistics.fmean(r["mean_rounds"] for r in rows),
        "engine_batch16_speedup": engine["speedup"],
    }
    print("\n| batching | concurrency | requests | req/s | p50 ms | p99 ms | mean rounds | mean batch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'on' if r['batching'] else 'off'} | {r['concurrency']} | {r['requests']} | "
              f"{r['requests_per_s']:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['mean_rounds']:.2f} | "
              f"{r['mean_batch_size']:.1f} |")
    print(f"\nbatching_speedup at concurrency 16: {headline['batching_speedup']:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"headline": headline, "rows": rows, "engine": engine, "model": model_dir, "quick": args.quick,
                               "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
                               "max_refine_rounds": args.max_rounds}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
