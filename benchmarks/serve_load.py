"""Load test of serving: does continuous batching pay off — in the engine alone, and through Ray Serve over HTTP?

    python benchmarks/serve_load.py [--quick] [--model DIR] [--client openai|raw] [--items N] [--out FILE]

Model: `--model DIR`, else the demo's trained model (benchmarks/demo_items.demo_model), else
tests/serve_model.py's tiny model that memorised a few tool-calling dialogues. Requests: the demo run's held-out test
items (benchmarks/demo_items), each as an OpenAI chat request with its tools, greedy, `max_tokens` = the run's eval
max_new_tokens (96), `max_refine_rounds` 3 (adaptive: the server stops when two rounds agree). Request i of every
level is item i mod N, so both variants answer the same items.

1. The engine alone, in this process (1 torch thread, like a 1-CPU replica): toolace_r.serve.model.ServingModel with
   the default `max_rows` (continuous batching within the KV budget) vs `max_rows=1` (one request at a time);
   `concurrency` client threads call `submit(job).result()` in a closed loop. `engine_batching_speedup` = requests/s
   batched / unbatched at concurrency 16. The model thread's own CPU time per request is what the engine costs, split
   by the engine's pass accounting into prefill (prompts, follow-up segments: compute no batch shares) and decoding;
   `engine_batching_ceiling` is what batching could give at most with that split (batching_ceiling: Amdahl).
2. Through Ray Serve over HTTP: one replica per variant (1 CPU, min = max = 1), `serve.batching=true` vs `false`
   (max_rows 1), side by side and measured in alternation; closed-loop clients with the official `openai` client
   (or `--client raw`). `batching_speedup` = requests/s with / without batching at concurrency 16. CPU per request of
   each process (from /proc): the replica (its busiest thread = the model thread, the rest = Serve's request
   handling in the replica: the actor call, ASGI, FastAPI, validation, the response), the Serve proxy, the client.
   `serve_cpu_ms_per_request` = replica minus model thread, plus proxy: what Serve's own handling costs.

p50 / p99 latency at concurrency 1, 4 and 16 for every variant; `p99_over_p50_c16` is the batched Serve variant's.
Because the items differ in work (1–3 rounds, 5–96 tokens each), latency is also reported relative to the same
item's latency alone (the engine at concurrency 1): `slowdown` p50 / p99.
"""
from __future__ import annotations

import argparse
import itertools
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
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # for replicas

from tqdm import tqdm  # noqa: E402

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


def openai_tools(tools: list[dict]) -> list[dict]:
    """The project's function schemas → OpenAI tools (the server's convert_tools maps them back key for key)."""
    return [{"type": "function", "function": {"name": t["name"], "description": t.get("description") or "",
                                              "parameters": t["parameters"]}} for t in tools]


def workload(model_dir: str | None, n_items: int, model_size: str) -> tuple[str, list[dict], dict]:
    """(model dir, requests, where they came from). A request: OpenAI `tools` and `messages`, the project's
    `sample_tools` / `sample_messages` (for the in-process engine), and `max_tokens`."""
    from demo_items import demo_items, demo_model

    model_dir = model_dir or demo_model()
    if model_dir is None:  # no demo run here: the memorising test model and its dialogues
        from serve_model import EXAMPLES, _project_tools, calling_model

        model_dir = str(calling_model(size=model_size))
        reqs = [{"tools": t, "messages": openai_messages(m), "sample_tools": _project_tools(t), "sample_messages": m,
                 "max_tokens": None} for t, m, _ in EXAMPLES]
        return model_dir, reqs, {"items": "tests/serve_model.py EXAMPLES"}
    samples, source = demo_items(model_dir)
    reqs = [{"tools": openai_tools(s.tools), "messages": openai_messages(s.messages), "sample_tools": s.tools,
             "sample_messages": s.messages, "max_tokens": source["max_new_tokens"]} for s in samples[:n_items]]
    return model_dir, reqs, {"items": f"held-out split, first {len(reqs)}", **source}


class RawClient:
    """A load generator lighter than the openai client: one keep-alive `requests` session per thread, the same JSON
    body on the wire, the response read with `json`."""

    def __init__(self, base_url: str):
        self.url = base_url + "/chat/completions"
        self.local = threading.local()

    def ask(self, req: dict, max_rounds: int) -> int:
        """Send one request; return the refinement rounds the server reports."""
        import requests

        session = getattr(self.local, "session", None) or requests.Session()
        self.local.session = session
        body = {"model": "toolace-r", "messages": req["messages"], "tools": req["tools"],
                "max_refine_rounds": max_rounds}
        if req["max_tokens"]:
            body["max_tokens"] = req["max_tokens"]
        resp = session.post(self.url, json=body, timeout=600)
        resp.raise_for_status()
        return resp.json()["toolace_r"]["refinement_rounds"]


class OpenAIClient:
    """The official `openai` client, as agents use it."""

    def __init__(self, base_url: str):
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key="-", max_retries=0, timeout=600)

    def ask(self, req: dict, max_rounds: int) -> int:
        extra = {"max_tokens": req["max_tokens"]} if req["max_tokens"] else {}
        resp = self.client.chat.completions.create(model="toolace-r", messages=req["messages"], tools=req["tools"],
                                                   extra_body={"max_refine_rounds": max_rounds}, **extra)
        return resp.model_extra["toolace_r"]["refinement_rounds"]


def closed_loop(ask, n_requests: int, concurrency: int, desc: str) -> dict:
    """`concurrency` clients, `n_requests` in all; request i asks item i (ask(i) → rounds). Latency per request."""
    counter = itertools.count()
    done: list[tuple[int, float, int]] = []

    def client() -> None:
        while (i := next(counter)) < n_requests:
            start = time.perf_counter()
            rounds = ask(i)
            done.append((i, time.perf_counter() - start, rounds))
            bar.update()

    with tqdm(total=n_requests, leave=False, desc=desc) as bar:
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for f in [pool.submit(client) for _ in range(concurrency)]:
                f.result()
        wall = time.perf_counter() - start
    return {"concurrency": concurrency, "wall_s": wall, "done": done}


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def merge(parts: list[dict], solo: dict[int, float] | None = None) -> dict:
    """Alternating runs of one variant → requests/s over their summed wall time, latency percentiles over all; with
    `solo` (item → latency alone), the slowdown percentiles too."""
    done = [d for p in parts for d in p["done"]]
    lat = [d[1] for d in done]
    row = {
        "concurrency": parts[0]["concurrency"],
        "requests": len(lat),
        "requests_per_s": len(lat) / sum(p["wall_s"] for p in parts),
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * percentile(lat, 0.99),
        "mean_rounds": statistics.fmean(d[2] for d in done),
    }
    row["p99_over_p50"] = row["p99_ms"] / row["p50_ms"]
    if solo:
        slow = [lat_ / solo[i] for i, lat_, _ in done if i in solo]
        row["slowdown_p50"], row["slowdown_p99"] = statistics.median(slow), percentile(slow, 0.99)
    for key in ("cpu", "tick", "passes"):
        if key in parts[0]:
            row[key] = {k: sum(p[key][k] for p in parts) / len(lat) for k in parts[0][key]}  # per request
    return row


# ------------------------------------------------------------------------------------------------ the engine alone
def thread_cpu(tid: int) -> float:
    """CPU seconds of one thread of this process."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_alone(model_dir: str, reqs: list[dict], max_rounds: int, sizes: dict[int, int], repeats: int) -> dict:
    """ServingModel in this process, batched (max_rows default) vs unbatched (max_rows=1), closed loop."""
    import torch

    from toolace_r.serve.model import Job, ServingModel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models = {True: ServingModel.load(model_dir, dtype="float32"),
                  False: ServingModel.load(model_dir, dtype="float32", max_rows=1)}
        first = models[True]
        jobs = [Job(r["sample_tools"], r["sample_messages"], max_rounds, r["max_tokens"] or 256, 0.0,
                    prompt_ids=first.tokenize(first.prompt(r["sample_tools"], r["sample_messages"]))) for r in reqs]
        for served in models.values():  # warm-up: first forward passes, lazy imports
            served.run(jobs[:4])

        def level(batched: bool, n: int, c: int) -> dict:
            served = models[batched]
            tid = served._thread.native_id
            cpu0, proc0 = thread_cpu(tid), time.process_time()
            kinds0 = {k: dict(vars(v)) for k, v in served.engine.pass_stats.items()}
            part = closed_loop(lambda i: served.submit(jobs[i % len(jobs)]).result().rounds, n, c,
                               f"engine {'batched' if batched else 'unbatched'} c={c}")
            part["cpu"] = {"model_thread_ms": 1000 * (thread_cpu(tid) - cpu0),
                           "process_ms": 1000 * (time.process_time() - proc0)}
            kinds = {k: {f: v - kinds0[k][f] for f, v in vars(stats).items()}
                     for k, stats in served.engine.pass_stats.items()}
            prefill, decode = kinds["prefill"], kinds["decode"]
            part["passes"] = {"prefill_cpu_ms": 1000 * prefill["cpu_s"], "prefill_passes": prefill["passes"],
                              "decode_cpu_ms": 1000 * decode["cpu_s"], "decode_passes": decode["passes"],
                              "decode_rows": decode["rows"]}
            return part

        # every item alone first: what each costs without company (the slowdown reference)
        solo_part = level(True, len(jobs), 1)
        solo = {i: lat for i, lat, _ in solo_part["done"]}
        rows = []
        for c in CONCURRENCY:
            parts: dict[bool, list[dict]] = {True: [], False: []}
            for _ in range(repeats):
                for batched in (True, False):
                    parts[batched].append(level(batched, sizes[c] // repeats, c))
            for batched in (True, False):
                row = {"batched": batched, **merge(parts[batched], solo)}
                rows.append(row)
                print(f"engine {'batched  ' if batched else 'unbatched'} c={c:2d}: {row['requests_per_s']:6.2f} req/s "
                      f" p50 {row['p50_ms']:6.0f} ms  p99 {row['p99_ms']:6.0f} ms  (p99/p50 {row['p99_over_p50']:.2f}, "
                      f"slowdown p50 {row['slowdown_p50']:.2f} p99 {row['slowdown_p99']:.2f})  model thread "
                      f"{row['cpu']['model_thread_ms']:.1f} CPU ms/request (prefill "
                      f"{row['passes']['prefill_cpu_ms']:.1f}, decode {row['passes']['decode_cpu_ms']:.1f}; "
                      f"rows/decode pass {row['passes']['decode_rows'] / max(row['passes']['decode_passes'], 1e-9):.1f})",
                      flush=True)
    finally:
        torch.set_num_threads(threads)
    solo_lat = list(solo.values())
    return {"rows": rows, "solo": {"p50_ms": 1000 * statistics.median(solo_lat),
                                   "p99_ms": 1000 * percentile(solo_lat, 0.99),
                                   "p99_over_p50": percentile(solo_lat, 0.99) / statistics.median(solo_lat),
                                   "model_thread_ms_per_request": solo_part["cpu"]["model_thread_ms"] / len(jobs)},
            "solo_latency_s": solo}


def batching_ceiling(batched: dict, unbatched: dict) -> dict:
    """What batching can give at most, from the engine's own pass accounting (per request, c16): prefill — the
    prompt and each follow-up round's segment, fed apart — is compute a batch cannot share, so batching only makes
    the decoding passes cheaper per row. Ceiling = unbatched CPU / (unbatched prefill + unbatched decode rows x the
    batched run's CPU per decoded row) (Amdahl)."""
    per_row = {name: p["decode_cpu_ms"] / max(p["decode_rows"], 1e-9) for name, p in
               (("batched", batched), ("unbatched", unbatched))}
    prefill, decode = unbatched["prefill_cpu_ms"], unbatched["decode_cpu_ms"]
    return {
        "engine_prefill_ms_per_request_c16_unbatched": prefill,
        "engine_decode_ms_per_request_c16_unbatched": decode,
        "engine_prefill_share_unbatched": prefill / (prefill + decode),
        "engine_decode_ms_per_row_pass_batched": per_row["batched"],
        "engine_decode_ms_per_row_pass_unbatched": per_row["unbatched"],
        "engine_rows_per_decode_pass_c16_batched": batched["decode_rows"] / max(batched["decode_passes"], 1e-9),
        "engine_batching_ceiling": (prefill + decode) / (prefill + unbatched["decode_rows"] * per_row["batched"]),
    }


# ------------------------------------------------------------------------------------------------ through Serve
def ray_processes() -> dict[str, int]:
    """PIDs of the Serve proxy and of each variant's replica (their process titles)."""
    import psutil

    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith("ray::ProxyActor"):
            found["proxy"] = proc.pid
        for name in ("batching", "no_batching"):
            if cmd.startswith(f"ray::ServeReplica:{name}:"):
                found[name] = proc.pid
    return found


def cpu_snapshot(pid: int) -> dict[int, float]:
    """CPU seconds of every thread of a process."""
    import psutil

    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def serve_level(client, reqs: list[dict], n: int, c: int, max_rounds: int, pids: dict[str, int], name: str,
                health) -> dict:
    replica0, proxy0 = cpu_snapshot(pids[name]), cpu_snapshot(pids["proxy"])
    client0, health0 = time.process_time(), health()
    part = closed_loop(lambda i: client.ask(reqs[i % len(reqs)], max_rounds), n, c, f"serve {name} c={c}")
    replica1, proxy1, health1 = cpu_snapshot(pids[name]), cpu_snapshot(pids["proxy"]), health()
    deltas = sorted((replica1[t] - replica0.get(t, 0.0) for t in replica1), reverse=True)
    part["cpu"] = {"replica_ms": 1000 * sum(deltas), "model_thread_ms": 1000 * deltas[0],
                   "replica_other_threads_ms": 1000 * sum(deltas[1:]),
                   "proxy_ms": 1000 * sum(proxy1[t] - proxy0.get(t, 0.0) for t in proxy1),
                   "client_ms": 1000 * (time.process_time() - client0)}
    part["tick"] = {"engine_steps": health1["steps"] - health0["steps"]}
    return part


def engine_digest() -> str:
    """sha256 of toolace_r/engine/*.py, refine.py and serve/model.py: which engine these figures measured."""
    import hashlib

    root = REPO / "toolace_r"
    digest = hashlib.sha256()
    for path in sorted(root.glob("engine/*.py")) + [root / "refine.py", root / "serve" / "model.py"]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per level (≈ 4 min)")
    parser.add_argument("--model", help="model dir to serve (default: the demo's trained model, else the tiny "
                        "memorising test model)")
    parser.add_argument("--items", type=int, default=0, help="distinct requests (held-out items; default 32 quick, "
                        "128 full)")
    parser.add_argument("--max-rounds", type=int, default=3, help="max_refine_rounds sent with every request")
    parser.add_argument("--model-size", choices=["tiny", "small"], default="tiny",
                        help="without a demo model: the memorising test model's size (serve_model.SHAPES)")
    parser.add_argument("--client", choices=["openai", "raw"], default="openai",
                        help="load generator: the official openai client, or plain keep-alive HTTP (RawClient)")
    parser.add_argument("--skip-serve", action="store_true", help="the engine alone only")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serve_load.json"))
    args = parser.parse_args()
    t0 = time.perf_counter()
    n_items = args.items or (32 if args.quick else 128)
    model_dir, reqs, source = workload(args.model, n_items, args.model_size)
    print(f"model {model_dir}; {len(reqs)} distinct requests ({source['items']})", flush=True)
    repeats = 2
    engine_sizes = {c: (max(16, 4 * c) if args.quick else max(64, 16 * c)) for c in CONCURRENCY}
    engine = engine_alone(model_dir, reqs, args.max_rounds, engine_sizes, repeats)

    def erow(batched: bool, c: int) -> dict:
        return next(r for r in engine["rows"] if r["batched"] == batched and r["concurrency"] == c)

    headline = {
        "engine_batching_speedup": erow(True, 16)["requests_per_s"] / erow(False, 16)["requests_per_s"],
        "engine_rps_c16_batched": erow(True, 16)["requests_per_s"],
        "engine_rps_c16_unbatched": erow(False, 16)["requests_per_s"],
        "engine_p99_over_p50_c16": erow(True, 16)["p99_over_p50"],
        "engine_solo_p99_over_p50": engine["solo"]["p99_over_p50"],
        "engine_model_thread_ms_per_request_c16_batched": erow(True, 16)["cpu"]["model_thread_ms"],
        "engine_model_thread_ms_per_request_c16_unbatched": erow(False, 16)["cpu"]["model_thread_ms"],
        **batching_ceiling(erow(True, 16)["passes"], erow(False, 16)["passes"]),
    }
    rows: list[dict] = []
    if not args.skip_serve:
        import ray
        import requests
        from ray import serve

        from toolace_r.config import load_config
        from toolace_r.serve.app import build_application

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
                         "serve.max_batch_size=16", "model.dtype=float32"]
            serve.run(build_application(load_config(None, overrides)), name=name, route_prefix=f"/{name}",
                      blocking=False)
            base_url = f"http://127.0.0.1:{port}/{name}/v1"
            clients[batching] = RawClient(base_url) if args.client == "raw" else OpenAIClient(base_url)
            closed_loop(lambda i, b=batching: clients[b].ask(reqs[i % len(reqs)], args.max_rounds), 8, 2,
                        f"warm-up {name}")
        pids = ray_processes()
        print(f"processes: {pids}", flush=True)

        def health(name: str):
            return lambda: requests.get(f"http://127.0.0.1:{port}/{name}/health", timeout=60).json()

        try:
            for c in CONCURRENCY:
                n = (4 * c + 8) if args.quick else max(48, 8 * c)
                parts: dict[bool, list[dict]] = {True: [], False: []}
                for _ in range(repeats):
                    for batching in (True, False):
                        name = "batching" if batching else "no_batching"
                        parts[batching].append(serve_level(clients[batching], reqs, n // repeats, c, args.max_rounds,
                                                           pids, name, health(name)))
                for batching in (True, False):
                    row = {"batching": batching, **merge(parts[batching], engine["solo_latency_s"])}
                    rows.append(row)
                    cpu = row["cpu"]
                    print(f"serve batching={batching!s:5} c={c:2d}: {row['requests_per_s']:6.2f} req/s  "
                          f"p50 {row['p50_ms']:6.0f} ms  p99 {row['p99_ms']:6.0f} ms  rounds "
                          f"{row['mean_rounds']:.2f}  CPU ms/request: replica {cpu['replica_ms']:.1f} (model thread "
                          f"{cpu['model_thread_ms']:.1f}), proxy {cpu['proxy_ms']:.1f}, client {cpu['client_ms']:.1f}",
                          flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()

        def srow(batching: bool, c: int) -> dict:
            return next(r for r in rows if r["batching"] == batching and r["concurrency"] == c)

        on, off = srow(True, 16), srow(False, 16)
        headline.update({
            "batching_speedup": on["requests_per_s"] / off["requests_per_s"],
            "rps_c16_batching": on["requests_per_s"],
            "rps_c16_no_batching": off["requests_per_s"],
            "p50_ms_c16": on["p50_ms"],
            "p99_ms_c16": on["p99_ms"],
            "p99_over_p50_c16": on["p99_over_p50"],
            "slowdown_p99_over_p50_c16": on["slowdown_p99"] / on["slowdown_p50"],
            # Serve's own handling: the replica's CPU outside its model thread, plus the proxy's
            "serve_cpu_ms_per_request_c16_batching": (on["cpu"]["replica_other_threads_ms"]
                                                      + on["cpu"]["proxy_ms"]),
            "serve_cpu_ms_per_request_c16_no_batching": (off["cpu"]["replica_other_threads_ms"]
                                                         + off["cpu"]["proxy_ms"]),
            "replica_model_thread_ms_per_request_c16_batching": on["cpu"]["model_thread_ms"],
            "replica_model_thread_ms_per_request_c16_no_batching": off["cpu"]["model_thread_ms"],
            "mean_rounds": statistics.fmean(r["mean_rounds"] for r in rows),
        })
        print("\n| batching | concurrency | requests | req/s | p50 ms | p99 ms | p99/p50 | mean rounds | replica CPU "
              "ms/req (model thread) | proxy CPU ms/req | engine steps/req |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {'on' if r['batching'] else 'off'} | {r['concurrency']} | {r['requests']} | "
                  f"{r['requests_per_s']:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['p99_over_p50']:.2f} | "
                  f"{r['mean_rounds']:.2f} | {r['cpu']['replica_ms']:.1f} ({r['cpu']['model_thread_ms']:.1f}) | "
                  f"{r['cpu']['proxy_ms']:.1f} | {r['tick']['engine_steps']:.1f} |")
    print()
    for k, v in headline.items():
        print(f"{k:<50} {v:.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    engine.pop("solo_latency_s")
    out.write_text(json.dumps({"headline": headline, "engine": engine, "serve_rows": rows, "model": model_dir,
                               "requests": source, "client": args.client, "quick": args.quick,
                               "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
                               "max_refine_rounds": args.max_rounds, "wall_s": time.perf_counter() - t0,
                               "engine_sources_sha256": engine_digest()},
                              indent=2))
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
    os._exit(0)  # the in-process ServingModels' model threads are daemons blocked in a wait: no clean join
