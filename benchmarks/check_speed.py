"""How many model outputs per second the BFCL AST checker judges on one core (parse + check).

Probing judges k answers for every pool sample, so `check` must stay cheap. Workload: for every BFCL v3 record of a
category (../shared/data/bfcl_v3), its reference answer plus the rule-labelled variants of toolace_r.calls.cases
(wrong values, types, missing params, decoding quirks, ...): distinct, realistic outputs, about a third of them
valid. Without the shared data, a synthetic simple-call workload is used (and said so).

Rates are single-threaded. `checks_per_s` divides by the process CPU time, which is what one core delivers even on
a shared, oversubscribed machine; the wall-clock rate is reported beside it, with the load average.

    python benchmarks/check_speed.py [--quick] [--out benchmarks/results/check_speed.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolace_r.calls import check, parse_calls  # noqa: E402
from toolace_r.calls.cases import cases_for_record, load_bfcl  # noqa: E402
from toolace_r.calls.checker import _CACHE  # noqa: E402

BFCL_DIR = ROOT.parent / "shared" / "data" / "bfcl_v3"
CATEGORIES = ["simple", "multiple", "parallel", "parallel_multiple", "irrelevance"]


def workload(category: str) -> list[tuple[str, list, list, str]]:
    """(output text, functions, truth, category) tuples."""
    rng = random.Random(0)
    items = []
    for question, truth in load_bfcl(BFCL_DIR, category):
        for _rule, text, _valid in cases_for_record(question, truth, category, rng):
            items.append((text, question["function"], truth, category))
    return items


def synthetic_simple(n: int = 2000) -> list[tuple[str, list, list, str]]:
    fns = [{"name": "calculate_triangle_area", "parameters": {"type": "dict", "required": ["base", "height"],
            "properties": {"base": {"type": "integer"}, "height": {"type": "integer"}, "unit": {"type": "string"}}}}]
    truth = [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]
    rng = random.Random(0)
    return [(f'[calculate_triangle_area(base={rng.choice([10, 11])}, height={rng.randint(1, 9)}, unit="units")]',
             fns, truth, "simple") for _ in range(n)]


def rate(fn, items, min_seconds: float) -> tuple[float, float, int]:
    """(checks per CPU second, checks per wall second, n) over repeated passes of `items`."""
    n = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while True:
        for item in items:
            fn(item)
        n += len(items)
        cpu = time.process_time() - cpu0
        if cpu >= min_seconds:
            return n / cpu, n / (time.perf_counter() - wall0), n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="≈0.5 s per measurement instead of 3 s")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "check_speed.json"))
    args = parser.parse_args()
    seconds = 0.5 if args.quick else 3.0

    have_bfcl = BFCL_DIR.is_dir()
    loads = {c: workload(c) for c in CATEGORIES} if have_bfcl else {"simple": synthetic_simple()}
    source = f"BFCL v3 ({BFCL_DIR})" if have_bfcl else "synthetic simple calls (../shared/data absent)"
    rows = []

    def measure(name, category, decoder, fn, items):
        cps, wps, n = rate(fn, items, seconds)
        rows.append({"measure": name, "category": category, "decoder": decoder, "outputs": len(items),
                     "checks_per_s": round(cps), "wall_checks_per_s": round(wps), "n": n})

    for category, items in loads.items():
        for decoder in ("lenient", "bfcl"):
            measure("parse+check", category, decoder, lambda it, d=decoder: check(it[0], it[1], it[2], it[3], d), items)
    simple = loads["simple"]
    for decoder in ("lenient", "bfcl"):
        measure("parse only", "simple", decoder, lambda it, d=decoder: _parse(it[0], d), simple)
    parsed = [(_parse(t, "lenient") or [], f, tr, c) for t, f, tr, c in simple]
    measure("check only (calls given)", "simple", "-", lambda it: check(it[0], it[1], it[2], it[3]), parsed)
    # the schema cache off: a fresh functions list per output (the copies are made before timing)
    uncached = [(t, [dict(x) for x in f], tr, c) for t, f, tr, c in simple]

    def no_cache(it):
        _CACHE.clear()
        return check(it[0], it[1], it[2], it[3])

    measure("parse+check, schema cache off", "simple", "lenient", no_cache, uncached)

    by = {(r["measure"], r["category"], r["decoder"]): r for r in rows}
    headline = {
        "checks_per_s": by[("parse+check", "simple", "lenient")]["checks_per_s"],
        "checks_per_s_bfcl_decoder": by[("parse+check", "simple", "bfcl")]["checks_per_s"],
        "wall_checks_per_s": by[("parse+check", "simple", "lenient")]["wall_checks_per_s"],
        "target_checks_per_s": 20000,
        "schema_cache_speedup": round(by[("parse+check", "simple", "lenient")]["checks_per_s"]
                                      / by[("parse+check, schema cache off", "simple", "lenient")]["checks_per_s"], 2),
        "parse_share_of_time": round(by[("parse+check", "simple", "lenient")]["checks_per_s"]
                                     / by[("parse only", "simple", "lenient")]["checks_per_s"], 2),
    }
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "load_average_1m": round(os.getloadavg()[0], 1), "python": platform.python_version()}

    print(f"workload: {source}; one thread; rates per CPU second (wall in brackets); load avg "
          f"{machine['load_average_1m']} on {machine['cores']} cores")
    print(f"{'measure':34s} {'category':18s} {'decoder':8s} {'outputs':>8s} {'checks/s':>10s} {'(wall)':>10s}")
    for r in rows:
        print(f"{r['measure']:34s} {r['category']:18s} {r['decoder']:8s} {r['outputs']:8d} {r['checks_per_s']:10d} "
              f"{r['wall_checks_per_s']:10d}")
    print(f"headline: {json.dumps(headline)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"headline": headline, "rows": rows, "machine": machine, "workload": source,
                               "quick": args.quick}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _parse(text: str, decoder: str):
    from toolace_r.errors import CallParseError

    try:
        return parse_calls(text, decoder)
    except CallParseError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
