"""Guided decoding's effect on accuracy: two `toolace-r eval` runs of one model on the same items, plain and with
`eval.guided=true`, compared item by item.

    toolace-r eval --config jobs/demo.yaml --model DIR --data builtin --out PLAIN eval.num_actors=0
    toolace-r eval --config jobs/demo.yaml --model DIR --data builtin --out GUIDED eval.num_actors=0 eval.guided=true
    python benchmarks/guided_accuracy.py PLAIN GUIDED [--out FILE]

Per category, for the single pass and the refined answer: each run's accuracy with its Wilson 95 % interval, the
paired difference guided − plain with a 95 % paired-bootstrap interval, and McNemar's exact p; plus the share of
first answers that are malformed call attempts (lenient decoder: a call was begun but does not parse). Rows: each
category, "calls" (every category whose right answer is a call: all but irrelevance) and "overall".
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolace_r.calls import parse_calls  # noqa: E402
from toolace_r.errors import CallParseError  # noqa: E402
from toolace_r.stats import mcnemar, paired_bootstrap, wilson_interval  # noqa: E402


def rows(run_dir: str) -> dict[str, dict]:
    path = Path(run_dir) / "outputs.jsonl"
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def malformed(text: str) -> bool:
    try:
        parse_calls(text)
        return False
    except CallParseError:
        return True


def compare(plain: dict[str, dict], guided: dict[str, dict]) -> dict[str, dict]:
    if set(plain) != set(guided):
        raise SystemExit("the two runs answered different items")
    groups: dict[str, list[str]] = {}
    for key, row in plain.items():
        groups.setdefault(row["category"], []).append(key)
        if row["category"] != "irrelevance":
            groups.setdefault("calls", []).append(key)
        groups.setdefault("overall", []).append(key)
    out = {}
    for name in sorted(groups, key=lambda g: (g in ("calls", "overall"), g == "overall", g)):
        keys = sorted(groups[name])
        entry = {"n": len(keys)}
        for field, label in (("valid", "single"), ("refined_valid", "refined")):
            a = [bool(plain[k][field]) for k in keys]
            b = [bool(guided[k][field]) for k in keys]
            boot = paired_bootstrap(a, b)
            entry[label] = {
                "plain": sum(a) / len(a), "plain_ci95": wilson_interval(sum(a), len(a)),
                "guided": sum(b) / len(b), "guided_ci95": wilson_interval(sum(b), len(b)),
                "diff": boot["diff"], "diff_ci95": boot["ci95"], "mcnemar_p": mcnemar(a, b)["p_value"],
            }
        entry["malformed_first_answers"] = {"plain": sum(malformed(plain[k]["first_answer"]) for k in keys),
                                            "guided": sum(malformed(guided[k]["first_answer"]) for k in keys)}
        out[name] = entry
    return out


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def table(result: dict[str, dict]) -> str:
    lines = ["| category | n | pass | plain | guided | guided − plain (95 % CI) | McNemar p | malformed first answers "
             "plain → guided |", "|---|---:|---|---|---|---|---:|---|"]
    for name, e in result.items():
        for label in ("single", "refined"):
            f = e[label]
            lo, hi = f["diff_ci95"]
            lines.append(
                f"| {name} | {e['n']} | {label} | {pct(f['plain'])} [{pct(f['plain_ci95'][0])}, "
                f"{pct(f['plain_ci95'][1])}] | {pct(f['guided'])} [{pct(f['guided_ci95'][0])}, "
                f"{pct(f['guided_ci95'][1])}] | {100 * f['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                f"{f['mcnemar_p']:.3g} | " + (f"{e['malformed_first_answers']['plain']} → "
                                             f"{e['malformed_first_answers']['guided']}" if label == "single" else "")
                + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plain")
    parser.add_argument("guided")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    result = compare(rows(args.plain), rows(args.guided))
    print(table(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
