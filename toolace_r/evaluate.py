"""Evaluation harness: single-pass and adaptive-refinement accuracy per category (PAPER.md §4).

`evaluate(cfg, model_path, specs, out_dir)` loads each eval spec (`builtin` = the held-out split of the built-in pool,
`bfcl:DIR[:cats]` / `bfcl:pkg`, `apibank:FILE_OR_DIR`, `acebench:DIR[:cats]`, or any sample file;
toolace_r.data.pool.load_eval_spec), runs every sample through adaptive self-refinement (toolace_r.refine) and judges
the first answer (= the single-pass answer) and the final answer with the AST checker (toolace_r.calls.check, the
answer read by `eval.decoder`: bfcl, BFCL's own decoder, by default | lenient) — or, for an item that carries its
benchmark's own rule (ACEBench), by that rule (`Sample.verdict`).

The samples flow through Ray Data: fixed batches of `eval.batch_size` items (toolace_r.raydata; greedy answers
depend on a batch's padding, so the batches must not depend on the cluster or its load) → `map_batches(EvalActor)`
on `ActorPoolStrategy(size=eval.num_actors)`, each actor holding the model once, so a large set uses the whole
cluster. Per category it reports n, accuracy
(single pass), refined_accuracy, mean_rounds, tokens generated, forward passes and time (actor seconds spent on that
category's batches); "overall" pools every sample (not any benchmark's own overall: for a `bfcl:` spec the
leaderboard's aggregation is computed apart, toolace_r.bfcl_summary, printed after the table and written under
`summaries` in metrics.json). Output: a table on stdout (eval_command), `metrics.json` and
`outputs.jsonl` (every answer and verdict) in out_dir, each written atomically.

`--model oracle:gold` scores the ground truths themselves as outputs through the same pipeline: a harness check that
must come out at (nearly) 100 % — anything less is a checker, reader or data problem, never a model one.
`--model openai:URL[#name]` asks a served model instead (toolace_r.endpoint: one request per item, in-process on a
thread pool, single pass; the same judge). `--pool [PATH]` first counts the test items that also occur in the pool
(toolace_r.leaks) and writes the counts to metrics.json under `leaks`. The printed table (toolace_r.tables) gives
every figure with its 95 % interval.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from toolace_r import io as rio
from toolace_r.calls.checker import call_rule
from toolace_r.config import Config
from toolace_r.data.schema import Sample
from toolace_r.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ORACLE = "oracle:gold"  # model path that answers with the ground truth (harness self-check)

OUTPUT_COLUMNS = ("id", "group", "category", "first_answer", "answer", "valid", "refined_valid", "error_type",
                  "refined_error_type", "reason", "refined_reason", "rounds", "tokens", "forward_passes", "time_s",
                  "valid_by_round")


class EvalActor:
    """One Ray Data actor: loads the model once; a batch of sample rows → one output row per sample."""

    def __init__(self, model_path: str, style: str, settings: dict[str, Any], endpoint: Any = None):
        from toolace_r.generation import pin_torch_threads

        threads = float(settings.get("torch_threads") or 0)
        if threads > 0:
            pin_torch_threads(threads)
        self.style, self.settings = style, dict(settings)
        self.model = self.tokenizer = None
        self.endpoint = endpoint  # toolace_r.endpoint.EndpointModel for `openai:URL`: the server answers
        if model_path != ORACLE and endpoint is None:
            from toolace_r import storage
            from toolace_r.models import load_model

            if storage.is_remote(model_path):
                model_path = storage.localize(model_path)
            self.model, self.tokenizer = load_model(model_path, dtype=settings.get("dtype", "auto"),
                                                    trust_remote_code=bool(settings.get("trust_remote_code")))
            from toolace_r.engine import Engine, default_kv_cache_tokens

            gb = float(settings.get("kv_cache_gb") or 0)
            self.engine = Engine(self.model, self.tokenizer,
                                 kv_cache_tokens=default_kv_cache_tokens(self.model, gb),
                                 draft_verify=bool(settings["draft_verify"]) and settings["keep_answer"] == "repeat",
                                 reuse_prefix=bool(settings["reuse_prefix"]))

    def answer(self, samples: list[Sample]) -> list[dict[str, Any]]:
        """Each sample's first and final answer, rounds, tokens, forward passes."""
        if self.endpoint is not None:
            return self.endpoint.answer(samples)
        if self.model is None:
            from toolace_r.data.prompts import render_answer

            # a benchmark's own reference text where its judge reads text (ACEBench), else the rendered gold calls
            gold = [s.gold_answer() if s.scoring else render_answer(_oracle_calls(s)) for s in samples]
            return [{"first_answer": g, "answer": g, "answers": [g], "rounds": 1, "tokens": 0, "forward_passes": 0}
                    for g in gold]
        from toolace_r.refine import RefineItem, adaptive_refine

        s = self.settings
        results = adaptive_refine(
            self.model, self.tokenizer,
            [RefineItem(x.tools, x.messages, constraint=_guided(x.tools) if s.get("guided") else None)
             for x in samples],
            max_rounds=int(s["max_rounds"]), max_new_tokens=int(s["max_new_tokens"]), style=self.style,
            temperature=float(s["temperature"]), top_p=float(s["top_p"]), seed=int(s["seed"]),
            keep_answer=s["keep_answer"], engine=self.engine,
        )
        return [{"first_answer": r.first_answer, "answer": r.answer, "answers": list(r.answers or [r.answer]),
                 "rounds": r.rounds, "tokens": r.tokens, "forward_passes": r.forward_passes} for r in results]

    def __call__(self, batch: Any) -> dict[str, list]:
        """A batch (a pyarrow table from Ray Data: one fixed batch, toolace_r.raydata; or a dict of columns) → one
        output row per sample. Each fixed batch is answered on its own: its padding is part of the computation."""
        from toolace_r.raydata import split_batches

        parts = split_batches(batch) if hasattr(batch, "column_names") else [batch]
        outs = [self.answer_batch(part) for part in parts]
        return {c: [v for out in outs for v in out[c]] for c in OUTPUT_COLUMNS}

    def answer_batch(self, batch: Any) -> dict[str, list]:
        rows = _rows_of(batch)
        if not rows:
            return {c: [] for c in OUTPUT_COLUMNS}
        samples = [Sample.from_row(r) for r in rows]
        start = time.perf_counter()
        answers = self.answer(samples)
        share = (time.perf_counter() - start) / len(rows)
        out: dict[str, list] = {c: [] for c in OUTPUT_COLUMNS}
        decoder = self.settings["decoder"]
        for row, sample, ans in zip(rows, samples, answers):
            if "judged" in ans:  # an endpoint's reply: its tool_calls judged as structured calls (one pass)
                from toolace_r.endpoint import judge

                first = final = judge(sample, ans.pop("judged"), ans["answer"], decoder)
            else:
                # Sample.verdict: the AST checker on the truth, or the item's benchmark rule (ACEBench's own)
                first, final = sample.verdict(ans["first_answer"], decoder), sample.verdict(ans["answer"], decoder)
            # valid_by_round[r-1]: correct had refinement been capped at r rounds (greedy refinement up to r is the
            # same computation; an item that stopped earlier keeps its last answer).
            verdicts = {ans["first_answer"]: first.valid, ans["answer"]: final.valid}
            chain = ans.pop("answers")
            by_round = []
            for r in range(1, int(self.settings["max_rounds"]) + 1):
                text = chain[min(r, len(chain)) - 1]
                if text not in verdicts:
                    verdicts[text] = sample.verdict(text, decoder).valid
                by_round.append(bool(verdicts[text]))
            values = dict(ans, id=sample.id, group=row["group"], category=sample.category, valid=bool(first.valid),
                          refined_valid=bool(final.valid), error_type=first.error_type,
                          refined_error_type=final.error_type, reason=first.reason, refined_reason=final.reason,
                          time_s=share, valid_by_round=by_round)
            for c in OUTPUT_COLUMNS:
                out[c].append(values[c])
        return out


def _guided(tools: list[dict[str, Any]]) -> Any:
    """eval.guided: the item's answer is a valid call to its tools or no-call text (toolace_r.constrain)."""
    from toolace_r.constrain import CallConstraint

    return CallConstraint(tools, allow_text=True) if tools else None


def _oracle_calls(sample: Sample) -> list[dict[str, Any]]:
    """The oracle's answer: the gold calls; for BFCL's live_relevance, which has no ground truth and counts any
    call as right, a call to the first tool (so the self-check exercises the relevance rule, not a missing answer)."""
    if not sample.truth and call_rule(sample.category, sample.truth) == "any" and sample.tools:
        return [{"name": sample.tools[0]["name"], "arguments": {}}]
    return sample.gold_calls()


def _rows_of(batch: Any) -> list[dict[str, Any]]:
    """A Ray Data batch (dict of columns, pyarrow table or pandas frame) → list of row dicts."""
    if hasattr(batch, "to_pylist"):
        return batch.to_pylist()
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):
        return batch.to_dict("records")
    columns = list(batch)
    n = len(batch[columns[0]]) if columns else 0
    return [{c: (batch[c][i].item() if hasattr(batch[c][i], "item") else batch[c][i]) for c in columns} for i in range(n)]


def load_groups(cfg: Config, specs: list[str]) -> dict[str, list[Sample]]:
    """Every spec's categories; keys are `category` for one spec and `label/category` for several (`label` = the
    spec's kind: builtin, bfcl, apibank, or the file stem), so the same category from two sources never merges."""
    from toolace_r.data.pool import load_eval_spec

    if not specs:
        raise ConfigError("eval: no data specs given (--data or eval.data)")
    groups: dict[str, list[Sample]] = {}
    for spec in specs:
        loaded = load_eval_spec(spec, limit=cfg.eval.limit, builtin=cfg.pool.builtin)
        label = spec.split(":", 1)[0] if ":" in spec else Path(spec).stem
        for category, samples in loaded.items():
            key = category if len(specs) == 1 else f"{label}/{category}"
            if key in groups:
                raise DataError(f"eval: category {key!r} appears twice (spec {spec!r}); give distinct specs")
            if samples:
                groups[key] = samples
    if not groups:
        raise DataError(f"eval: the specs {specs} hold no samples")
    return groups


def summarize(outputs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Output rows → {group: metrics, ..., "overall": metrics}."""
    from toolace_r.acebench_summary import conversation_metrics

    by_group: dict[str, list[dict]] = defaultdict(list)
    for row in outputs:
        by_group[row["group"]].append(row)

    def metrics(rows: list[dict]) -> dict[str, Any]:
        n = len(rows)
        errors = Counter(r["refined_error_type"] for r in rows if not r["refined_valid"])
        return {
            "n": n,
            "accuracy": sum(r["valid"] for r in rows) / n,
            "refined_accuracy": sum(r["refined_valid"] for r in rows) / n,
            "mean_rounds": sum(r["rounds"] for r in rows) / n,
            "tokens": int(sum(r["tokens"] for r in rows)),
            "forward_passes": int(sum(r["forward_passes"] for r in rows)),
            "time_s": round(sum(r["time_s"] for r in rows), 3),
            "changed_by_refinement": sum(r["first_answer"] != r["answer"] for r in rows),
            # accuracy with refinement capped at r = 1..max_rounds rounds ([0] = accuracy, [-1] = refined_accuracy)
            "accuracy_by_rounds": [sum(r["valid_by_round"][j] for r in rows) / n
                                   for j in range(min(len(r.get("valid_by_round") or ()) for r in rows))],
            "errors": dict(errors.most_common(5)),
            **conversation_metrics(rows),  # ACEBench's multi-turn groups: end-to-end counts per conversation
        }

    result = {group: metrics(rows) for group, rows in sorted(by_group.items())}
    if outputs:
        result["overall"] = metrics(outputs)
    return result


def benchmark_summaries(specs: list[str], result: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each benchmark's own summary beside the per-category figures, keyed by spec label: for `bfcl:` the
    leaderboard's aggregation of the categories that spec produced (toolace_r.bfcl_summary)."""
    from toolace_r.bfcl_summary import bfcl_summary, guess_version, scores_from_result
    from toolace_r.acebench_summary import acebench_summary
    from toolace_r.data.bfcl_dir import spec_version
    from toolace_r.tables import add_acebench_intervals, apibank_summary

    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        if spec.split(":", 1)[0] == "acebench":  # ACEBench's normal / special averages (toolace_r.acebench_summary)
            ace = acebench_summary(result, "" if len(specs) == 1 else "acebench/")
            if ace:
                out["acebench"] = add_acebench_intervals(ace)
        if spec.split(":", 1)[0] == "apibank":  # level-1 and level-2, reported apart (toolace_r.tables)
            bank = apibank_summary(result, "" if len(specs) == 1 else "apibank/")
            if bank:
                out["apibank"] = bank
        if spec.split(":", 1)[0] != "bfcl":
            continue
        single, refined = scores_from_result(result, "" if len(specs) == 1 else "bfcl/")
        if single:
            out["bfcl"] = bfcl_summary(single, refined, spec_version(spec) or guess_version(single))
    return out


def format_summaries(summaries: dict[str, dict[str, Any]]) -> str:
    """The benchmark summary blocks alone (the part of format_table after the categories)."""
    from toolace_r.tables import format_blocks

    return "\n".join(format_blocks(summaries, "-" * 104))


def format_table(result: dict[str, dict[str, Any]], summaries: dict[str, dict[str, Any]] | None = None) -> str:
    """One table: every category (the last row pools every sample and is no benchmark's own overall), then each
    benchmark's summary, single pass and refined, each figure with its 95 % interval (toolace_r.tables)."""
    from toolace_r.tables import format_results

    if summaries is None:
        summaries = (result.get("overall") or {}).get("summaries") or {}
    return format_results(result, summaries)


def evaluate(cfg: Config, model_path: str, specs: list[str], out_dir: str,
             leaks: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate `model_path` (a model dir, ORACLE, or an endpoint `openai:URL[#name]`) on `specs`; write
    metrics.json + outputs.jsonl to out_dir; return {category: {"n", "accuracy", "accuracy_ci95",
    "refined_accuracy", "refined_accuracy_ci95", "mean_rounds", "tokens", "time_s", ...}, "overall": {...,
    "summaries": each benchmark's own summary (benchmark_summaries)}}. `leaks` (toolace_r.leaks.check_leaks, when
    the caller has the pool) is written to metrics.json beside the figures."""
    import ray

    from toolace_r import ray_session
    from toolace_r.console import Progress
    from toolace_r.endpoint import NOTE, EndpointModel, is_endpoint
    from toolace_r.models import keep_answer_for, prompt_style_for
    from toolace_r.raydata import batched_dataset
    from toolace_r.tables import add_intervals

    ec = cfg.eval
    if ec.max_rounds < 1:
        raise ConfigError(f"eval.max_rounds must be >= 1, got {ec.max_rounds}")
    if ec.guided and is_endpoint(model_path):
        raise ConfigError("eval.guided decodes a model dir under the tool-call constraint; a toolace-r server does it "
                          "per request: set eval.endpoint.extra_body={guided: true} instead")
    groups = load_groups(cfg, list(specs))
    endpoint = EndpointModel(model_path, cfg) if is_endpoint(model_path) else None
    style = ("endpoint" if endpoint else cfg.model.prompt_style if model_path == ORACLE
             else prompt_style_for(cfg, model_path))
    items = [dict(s.to_row(), group=group) for group, samples in groups.items() for s in samples]
    log.info("eval: %d samples in %d categories, model %s, style %s, %d actor(s)", len(items), len(groups),
             model_path, style, ec.num_actors)
    settings = dict(
        max_rounds=ec.max_rounds, max_new_tokens=ec.generation.max_new_tokens, temperature=ec.generation.temperature,
        top_p=ec.generation.top_p, seed=ec.generation.seed, kv_cache_gb=cfg.engine.kv_cache_gb, decoder=ec.decoder,
        draft_verify=cfg.refine.draft_verify, reuse_prefix=cfg.refine.reuse_prefix, dtype=cfg.model.dtype,
        keep_answer=cfg.refine.keep_answer if endpoint or model_path == ORACLE else keep_answer_for(cfg, model_path),
        guided=ec.guided,
        trust_remote_code=cfg.model.trust_remote_code, torch_threads=max(1.0, ec.cpus_per_actor),
    )
    start = time.perf_counter()
    if ec.num_actors <= 0 or endpoint:  # in-process: debugging, benchmarks; an endpoint's thread pool asks the server
        actor = EvalActor(model_path, style, settings, endpoint)
        outputs = []
        try:
            with Progress("eval", len(items), "items") as bar:
                for i in range(0, len(items), ec.batch_size):
                    batch = actor({c: [r[c] for r in items[i:i + ec.batch_size]] for c in items[0]})
                    outputs += [dict(zip(batch, vals)) for vals in zip(*batch.values())]
                    bar.update(len(batch["id"]))
        finally:
            if endpoint:
                endpoint.close()
    else:
        ray_session.start_or_join(cfg)
        # Fixed batches of eval.batch_size items, one block each, outputs in input order (toolace_r.raydata): greedy
        # answers depend on a batch's padding, so which items share a batch must not depend on Ray Data's block
        # layout or on which actor is free first. The in-process path above cuts the same batches.
        ds = batched_dataset(items, ec.batch_size).map_batches(
            EvalActor,
            fn_constructor_args=(model_path, style, settings),
            batch_size=None,  # one fixed batch per call
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=ec.num_actors),
            num_cpus=ec.cpus_per_actor,
            num_gpus=ec.gpus_per_actor,
        )
        outputs = []
        with Progress("eval", len(items), "items") as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                outputs += batch.to_pylist()
                bar.update(batch.num_rows)
    wall = time.perf_counter() - start
    outputs = [{c: _plain(row[c]) for c in OUTPUT_COLUMNS} for row in outputs]
    outputs.sort(key=lambda r: (r["group"], r["id"]))
    if len(outputs) != len(items):
        raise DataError(f"eval: {len(items)} samples went in but {len(outputs)} results came back")
    result = add_intervals(summarize(outputs))
    result["overall"]["wall_s"] = round(wall, 3)
    summaries = benchmark_summaries(list(specs), result)
    out = Path(out_dir)
    rio.write_jsonl(out / "outputs.jsonl", outputs)
    metrics = {
        "model": model_path, "specs": list(specs), "decoder": ec.decoder, "max_rounds": ec.max_rounds,
        "prompt_style": style, "draft_verify": cfg.refine.draft_verify, "reuse_prefix": cfg.refine.reuse_prefix,
        "keep_answer": settings["keep_answer"], "guided": ec.guided, "results": result, "summaries": summaries,
    }
    if endpoint:
        metrics.update(max_rounds=1, endpoint={"base_url": endpoint.spec.base_url, "model": endpoint.model,
                                               "extra_body": dict(ec.endpoint.extra_body or {}), "note": NOTE})
    if leaks is not None:
        metrics["leaks"] = leaks
    rio.write_json(out / "metrics.json", metrics)
    if summaries:
        result["overall"]["summaries"] = summaries
    log.info("eval: %d samples in %.1f s → %s", len(outputs), wall, out)
    return result


def _plain(value: Any) -> Any:
    """numpy scalars and arrays from Ray Data rows → plain Python (for JSON)."""
    return value.tolist() if hasattr(value, "tolist") else value


def eval_command(args: Any, cfg: Config) -> int:
    """`toolace-r eval --model DIR|oracle:gold|openai:URL[#name] --data SPEC... [--out DIR] [--decoder lenient]
    [--pool [PATH]]`."""
    from toolace_r.calls import decoder_label
    from toolace_r.endpoint import NOTE, is_endpoint

    model = getattr(args, "model", None) or cfg.model.path
    if model == "tiny":
        raise ConfigError("eval needs a model: --model DIR (or model.path=DIR), --model openai:URL[#name] for a "
                          "served one, or --model oracle:gold to score the ground truths themselves")
    looks_local = model.startswith(("/", ".", "~")) or Path(model).exists()
    if model != ORACLE and not is_endpoint(model) and looks_local and not Path(model).expanduser().is_dir():
        raise ConfigError(f"eval: model directory {model} does not exist")  # hub names pass through
    if getattr(args, "decoder", None):
        cfg.eval.decoder = args.decoder
    specs = list(getattr(args, "data", None) or cfg.eval.data)
    out = getattr(args, "out", None) or str(Path(cfg.run.dir) / "eval")
    leaks = None
    pool = getattr(args, "pool", None)
    if pool:  # before any figure is trusted: which test items also occur in the pool (toolace_r.leaks)
        from toolace_r.data.pool import load_pool
        from toolace_r.leaks import check_leaks, format_leaks, leak_groups

        if pool != POOL_FROM_CONFIG:
            cfg.pool.path = pool
        leaks = check_leaks(leak_groups(cfg, specs), load_pool(cfg.pool), cfg.eval.decoder)
        leaks["pool"] = cfg.pool.path
        print(format_leaks(leaks) + "\n")
    result = evaluate(cfg, model, specs, out, leaks=leaks)
    print(format_table(result))
    rounds = (NOTE if is_endpoint(model) else
              f"single = one pass; refined = adaptive self-refinement (≤ {cfg.eval.max_rounds} rounds)")
    print(f"\n{rounds}; 95 % intervals: Wilson for a category, normal from the categories' for a mean; "
          f"decoder: {decoder_label(cfg.eval.decoder)}; details in {out}/metrics.json and {out}/outputs.jsonl")
    return 0


POOL_FROM_CONFIG = "config"  # `--pool` without a path: the job's pool section (pool.path, pool.format, ...)
