"""Model-aware probing on Ray Data (PAPER.md §1): how often does the current model already get each sample right?

For every candidate sample the model answers k times (temperature T); each answer is parsed and judged by the AST
checker (`toolace_r.calls.check`); the pass rate p = n_correct / k is the sample's difficulty for this model.

The pool flows through Ray Data: fixed batches of `probe.batch_size` samples, one block each (toolace_r.raydata:
which samples share a batch decides their sampled answers, so it must not depend on the cluster or its load; a
Dataset the caller already has keeps its own blocks) → `map_batches(ProbeActor)` on an actor pool where each actor
loads the model once → `write_parquet`, in input order. The driver never loops over or collects the
pool, so the same code probes 500 samples on a laptop and 500 000 on a cluster (give `model_path` a location every
node can read: a shared mount or an object-store URI, which actors download once per node via storage.localize).

Output: one parquet directory, one row per sample —
`id, category, k, n_correct, pass_rate, answers: list[str], verdicts: list[str] (JSON of each Verdict),
n_tokens: list[int]` — plus `summary.json` (counts, mean pass rate, throughput). The directory appears in one
rename when everything is written, so a resumed run sees either no result or a complete one.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from toolace_r.config import Config
from toolace_r.console import Progress, watch
from toolace_r.data.schema import Sample
from toolace_r.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
INPUT_COLUMNS = ("id", "tools", "messages", "truth", "category")
RESULT_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("category", pa.string()),
    ("k", pa.int32()),
    ("n_correct", pa.int32()),
    ("pass_rate", pa.float64()),
    ("answers", pa.list_(pa.string())),
    ("verdicts", pa.list_(pa.string())),
    ("n_tokens", pa.list_(pa.int32())),
])


def verdict_json(verdict: Any) -> str:
    """A Verdict (valid, error_type, reason) as a JSON string: parquet keeps it as plain text."""
    return json.dumps(
        {"valid": bool(verdict.valid), "error_type": str(verdict.error_type), "reason": str(verdict.reason)},
        ensure_ascii=False,
    )


class ProbeActor:
    """One Ray Data actor: loads the model once, then turns batches of sample rows into probe result rows.

    Subclass and override `guides` to constrain decoding (a grammar, or forcing known text in tests); everything
    else — prompts, generation, parsing, checking — stays the same code path.
    """

    def __init__(
        self,
        model_path: str,
        prompt_style: str,
        k: int,
        generation: dict[str, Any],
        decoder: str = "bfcl",  # probe() passes probe.decoder (by default eval.decoder: one judge for both)
        dtype: str = "auto",
        trust_remote_code: bool = False,
        torch_threads: float = 0,  # CPUs of this actor → its torch threads (generation.pin_torch_threads); 0: as is
        kv_cache_gb: float = 0.0,  # the engine's KV-cache budget (engine.kv_cache_gb); 0: its default
    ):
        from toolace_r import storage
        from toolace_r.calls import check
        from toolace_r.engine import default_kv_cache_tokens
        from toolace_r.generation import Generator, pin_torch_threads

        if torch_threads > 0:
            pin_torch_threads(torch_threads)
        if storage.is_remote(model_path):
            model_path = storage.localize(model_path)
        self.generator = Generator.from_path(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
        if kv_cache_gb:
            self.generator.engine.kv_cache_tokens = default_kv_cache_tokens(self.generator.model, kv_cache_gb)
        self.check = check
        self.prompt_style, self.k, self.generation, self.decoder = prompt_style, k, dict(generation), decoder

    def guides(self, samples: list[Sample], prompts: list[str]) -> list[Any] | None:
        """Hook: one guide factory per sample (toolace_r.engine's per-request constraint), or None (plain sampling)."""
        return None

    def __call__(self, batch: pa.Table) -> pa.Table:
        from toolace_r.raydata import split_batches

        results = [self.probe_batch(part) for part in split_batches(batch)]
        return pa.concat_tables(results) if results else RESULT_SCHEMA.empty_table()

    def probe_batch(self, batch: pa.Table) -> pa.Table:
        """One batch of sample rows → its result rows. Sample s draws its k answers from probe.generation.seed +
        crc32(s.id): its answers do not depend on the batch it came in."""
        from toolace_r.data.prompts import render_prompt

        samples = _samples_from_table(batch)
        if not samples:
            return RESULT_SCHEMA.empty_table()
        tokenizer = self.generator.tokenizer
        prompts = [render_prompt(tokenizer, s.tools, s.messages, self.prompt_style) for s in samples]
        gen = self.generation
        answers = self.generator.generate(
            prompts,
            n=self.k,
            temperature=float(gen.get("temperature", 0.7)),
            top_p=float(gen.get("top_p", 1.0)),
            max_new_tokens=int(gen.get("max_new_tokens", 128)),
            seed=[int(gen.get("seed", 0)) + zlib.crc32(s.id.encode("utf-8")) for s in samples],
            guides=self.guides(samples, prompts),
        )
        columns: dict[str, list] = {name: [] for name in RESULT_SCHEMA.names}
        for sample, gens in zip(samples, answers):
            verdicts = [self.check(g.text, sample.tools, sample.truth, sample.category, self.decoder) for g in gens]
            n_correct = sum(bool(v.valid) for v in verdicts)
            columns["id"].append(sample.id)
            columns["category"].append(sample.category)
            columns["k"].append(len(gens))
            columns["n_correct"].append(n_correct)
            columns["pass_rate"].append(n_correct / len(gens))
            columns["answers"].append([g.text for g in gens])
            columns["verdicts"].append([verdict_json(v) for v in verdicts])
            columns["n_tokens"].append([g.n_tokens for g in gens])
        return pa.table(columns, schema=RESULT_SCHEMA)


def _samples_from_table(batch: pa.Table) -> list[Sample]:
    missing = [c for c in INPUT_COLUMNS if c not in batch.column_names]
    if missing:
        raise DataError(f"probe input rows lack column(s) {missing}; expected Sample.to_row() rows", field=missing[0])
    samples = []
    for row in batch.to_pylist():
        try:
            samples.append(Sample.from_row(row))
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"sample {row.get('id')!r} cannot be read: {err}", field="row") from None
    return samples


def probe(
    cfg: Config,
    model_path: str,
    samples: Sequence[Sample] | Any,
    out_dir: str | os.PathLike,
    *,
    actor_cls: type = ProbeActor,
) -> str:
    """Probe `samples` (a list of Sample, or a ray.data.Dataset of Sample.to_row() rows) with the model at
    `model_path`; write the results as parquet into `out_dir` (replaced atomically) and return its path."""
    import ray
    import ray.data

    from toolace_r import ray_session
    from toolace_r.models import prompt_style_for
    from toolace_r.raydata import batched_dataset, preserve_order

    pc = cfg.probe
    if pc.k < 1:
        raise ConfigError(f"probe.k must be >= 1, got {pc.k}")
    if pc.num_actors < 1 or pc.batch_size < 1:
        raise ConfigError(f"probe.num_actors and probe.batch_size must be >= 1, got {pc.num_actors}, {pc.batch_size}")
    if model_path == "tiny":
        raise ConfigError("model.path is 'tiny': build a model dir first (`toolace-r tiny-model --out DIR`)")
    local_model = Path(model_path).expanduser()
    if local_model.exists():
        model_path = str(local_model.resolve())  # workers may run in another directory
    ray_session.start_or_join(cfg)
    style = prompt_style_for(cfg, model_path)

    total = None
    out = Path(out_dir).expanduser().resolve()
    positions: dict[str, int] = {}
    done: set[str] = set()
    if isinstance(samples, ray.data.Dataset):
        # The caller's blocks decide the batches (map_batches bundles them to pc.batch_size rows): reproducible for
        # the same Dataset, not across block layouts. A list is cut into fixed batches here (toolace_r.raydata).
        dataset, batch_size = preserve_order(samples), pc.batch_size
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    else:
        if not samples:
            raise DataError("probe: the pool is empty")
        rows = [s.to_row() for s in samples]
        positions = {s.id: i for i, s in enumerate(samples)}
        if len(positions) == len(samples):  # resumable: see _partial_dir
            tmp = _partial_dir(out, cfg, model_path, style, rows)
            done = _finished_ids(tmp, positions, pc.batch_size)
            if done:
                log.info("probe: resuming %s: %d of %d samples were probed before, probing the rest", tmp.name,
                         len(done), len(samples))
        else:  # repeated ids: no way to tell which rows are done
            positions, tmp = {}, out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        dataset, batch_size, total = batched_dataset(rows, pc.batch_size, done), None, len(samples)
    cluster_cpus = ray.cluster_resources().get("CPU", 0)
    if pc.num_actors * pc.cpus_per_actor > cluster_cpus:
        log.warning("probe wants %d actors × %s CPUs but the cluster has %s CPUs: actors will wait for resources",
                    pc.num_actors, pc.cpus_per_actor, cluster_cpus)

    log.info("probing with %s (style %s): k=%d, T=%s, %d actor(s) × %s CPU / %s GPU, batches of %d",
             model_path, style, pc.k, pc.generation.temperature, pc.num_actors, pc.cpus_per_actor,
             pc.gpus_per_actor, pc.batch_size)
    start = time.perf_counter()
    results = None if dataset is None else dataset.map_batches(
        actor_cls,
        fn_constructor_kwargs=dict(
            model_path=model_path,
            prompt_style=style,
            k=pc.k,
            generation=dict(
                temperature=pc.generation.temperature,
                top_p=pc.generation.top_p,
                max_new_tokens=pc.generation.max_new_tokens,
                seed=pc.generation.seed,
            ),
            decoder=pc.decoder,
            dtype=cfg.model.dtype,
            trust_remote_code=cfg.model.trust_remote_code,
            torch_threads=max(1.0, pc.cpus_per_actor) if pc.gpus_per_actor == 0 else 0,
            kv_cache_gb=cfg.engine.kv_cache_gb,
        ),
        batch_format="pyarrow",
        batch_size=batch_size,  # None: one fixed batch (= one block) per call
        # one fixed batch in flight per actor: a batch is seconds to minutes of generation, and batches queued on the
        # first actor to come up leave the others idle (on a small pool, with nothing to do at all)
        compute=ray.data.ActorPoolStrategy(size=pc.num_actors, max_tasks_in_flight_per_actor=1),
        num_cpus=pc.cpus_per_actor,
        num_gpus=pc.gpus_per_actor,
        # the model replicas spread over the nodes: Ray's default fills the driver's node first, so on a CPU cluster
        # both actors could share one node's cores while another node idles
        scheduling_strategy="SPREAD",
        # An actor whose process dies (node lost, OOM kill) is restarted and its in-flight batches are retried, so
        # every sample still gets exactly one row (tests/test_faults.py): Ray Data's defaults for actor pools
        # (max_restarts=-1, max_task_retries=-1), relied on rather than passed (passing them is deprecated).
    )
    try:
        counted: dict[Path, int] = {}
        if results is not None:  # None: a resumed probe whose every batch was written before
            with Progress("probe", total, "samples") as bar, watch(bar, lambda: (_rows_written(tmp, counted), None, "")):
                results.write_parquet(str(tmp))
        if done:
            _order_files(tmp, positions)
        wall = time.perf_counter() - start
        summary = summarize(str(tmp), wall)
        summary.update(model_path=model_path, prompt_style=style, k=pc.k, temperature=pc.generation.temperature,
                       decoder=pc.decoder)
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        _replace_dir(tmp, out)
    finally:
        if tmp.exists() and not positions:  # a resumable probe's partial results stay for the rerun
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("probe: %d samples in %.1fs (%.1f samples/s, %.0f tokens/s); mean pass rate %.3f; "
             "mastered %d, learnable %d, too hard %d -> %s", summary["n"], wall, summary["samples_per_s"],
             summary["tokens_per_s"], summary["mean_pass_rate"], summary["mastered"], summary["learnable"],
             summary["too_hard"], out)
    return str(out)


def _partial_dir(out: Path, cfg: Config, model_path: str, style: str, rows: list[dict]) -> Path:
    """Where a probe of a list of samples writes until it is complete: `.NAME.partial-<fingerprint>` beside OUT,
    renamed to OUT at the end.

    A driver killed mid-probe leaves the parquet files of the batches already done there; a rerun of the same probe
    (same OUT, model dir and its weights files, prompt style, probe config and samples: the fingerprint) finds them
    and probes only the other batches. Any change gives another name, so rows of a different probe are never mixed
    in. The fixed batches (toolace_r.raydata) keep their rows, and so their answers, whatever was done before.
    """
    import hashlib

    digest = hashlib.sha256()
    model = Path(model_path)
    weights = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in model.glob("*.safetensors")) \
        if model.is_dir() else []
    digest.update(json.dumps({"out": str(out), "model": model_path, "weights": weights, "style": style,
                              "probe": dataclasses.asdict(cfg.probe), "dtype": cfg.model.dtype},
                             sort_keys=True, default=str).encode())
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return out.parent / f".{out.name}.partial-{digest.hexdigest()[:12]}"


def _finished_ids(directory: Path, positions: dict[str, int], batch_size: int) -> set[str]:
    """The sample ids a killed probe finished in `directory`. A file a writer was killed in (no parquet footer) is
    deleted, and so is every file holding rows of a batch that is not complete across the files (Ray Data split
    its block): those batches are probed again whole, so each sample ends up in exactly one row."""
    import pyarrow.parquet as pq

    if not directory.is_dir():
        return set()
    files: dict[Path, list[str]] = {}
    for f in sorted(directory.glob("*.parquet")):
        try:
            files[f] = pq.read_table(f, columns=["id"]).column("id").to_pylist()
        except Exception:  # noqa: BLE001 - written to when the driver died
            f.unlink(missing_ok=True)
    n = len(positions)
    while True:
        counts: dict[int, int] = {}
        for ids in files.values():
            for i in ids:
                b = positions[i] // batch_size
                counts[b] = counts.get(b, 0) + 1
        whole = {b for b, c in counts.items() if c == min(batch_size, n - b * batch_size)}
        broken = [f for f, ids in files.items() if any(positions[i] // batch_size not in whole for i in ids)]
        if not broken:
            return {i for ids in files.values() for i in ids}
        for f in broken:
            f.unlink(missing_ok=True)
            del files[f]


def _order_files(directory: Path, positions: dict[str, int]) -> None:
    """Rename a resumed probe's files `<position of the first sample>-<name>`: read back in name order (read_probe),
    the rows are in input order, as in a probe that was never interrupted (whose files already sort that way)."""
    import pyarrow.parquet as pq

    for f in sorted(directory.glob("*.parquet")):
        table = pq.read_table(f, columns=["id"])
        if table.num_rows:
            os.replace(f, f.with_name(f"{positions[table.column('id')[0].as_py()]:010d}-{f.name}"))


def _rows_written(directory: Path, counted: dict[Path, int]) -> int:
    """Rows in the finished parquet files under `directory` (footers only; a file still being written has none
    yet and is counted at a later call; `counted` remembers the files read): the probe's progress while Ray Data
    writes it."""
    import pyarrow.parquet as pq

    total = 0
    for f in directory.glob("*.parquet") if directory.is_dir() else ():
        if f not in counted:
            try:
                counted[f] = pq.read_metadata(f).num_rows
            except Exception:  # noqa: BLE001 - incomplete file: count it next time
                continue
        total += counted[f]
    return total


def _replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished `tmp` at `out`. An older result is moved aside first and deleted after the rename."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _parquet_files(path: str | os.PathLike) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataError(f"probe results {p} do not exist")
    files = sorted(p.glob("*.parquet"))
    if not files:
        raise DataError(f"probe results {p} hold no parquet files")
    return files


def _read_table(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    import pyarrow.parquet as pq

    tables = [pq.read_table(f, columns=columns) for f in _parquet_files(path)]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def read_probe(path: str | os.PathLike) -> list[dict]:
    """Probe result rows (dicts with the columns above) from a parquet directory or file."""
    return _read_table(path).to_pylist()


def summarize(path: str | os.PathLike, wall_s: float) -> dict[str, Any]:
    """Counts and throughput from the result columns that are scalars (answers are not read back)."""
    table = _read_table(path, ["category", "k", "n_correct", "pass_rate", "n_tokens"])
    rows = table.select(["category", "k", "n_correct", "pass_rate"]).to_pylist()
    tokens = sum(sum(t) for t in table.column("n_tokens").to_pylist())
    n = len(rows)
    answers = sum(r["k"] for r in rows)
    per_category: dict[str, dict[str, float]] = {}
    for r in rows:
        c = per_category.setdefault(r["category"], {"n": 0, "mean_pass_rate": 0.0})
        c["n"] += 1
        c["mean_pass_rate"] += r["pass_rate"]
    for c in per_category.values():
        c["mean_pass_rate"] = round(c["mean_pass_rate"] / c["n"], 4)
    return {
        "n": n,
        "answers": answers,
        "generated_tokens": tokens,
        "mean_pass_rate": round(sum(r["pass_rate"] for r in rows) / n, 4) if n else 0.0,
        "mastered": sum(r["n_correct"] == r["k"] for r in rows),
        "learnable": sum(0 < r["n_correct"] < r["k"] for r in rows),
        "too_hard": sum(r["n_correct"] == 0 for r in rows),
        "per_category": per_category,
        "wall_s": round(wall_s, 3),
        "samples_per_s": round(n / wall_s, 3) if wall_s > 0 else 0.0,
        "tokens_per_s": round(tokens / wall_s, 1) if wall_s > 0 else 0.0,
    }


def probe_command(args, cfg: Config) -> int:
    """`toolace-r probe --config FILE model.path=DIR pool.path=FILE [--out DIR]`."""
    from toolace_r.data.pool import load_pool_result

    read = load_pool_result(cfg.pool)
    samples = read.samples
    skipped = f" ({read.skipped} bad records skipped; first: {read.errors[0]})" if read.skipped else ""
    print(f"pool: {len(samples)} samples from {read.records} records{skipped}")
    out = args.out or os.path.join(cfg.run.dir, "probe")
    path = probe(cfg, cfg.model.path, samples, out)
    summary = json.loads((Path(path) / SUMMARY_FILE).read_text())
    print(f"probed {summary['n']} samples × k={summary['k']} in {summary['wall_s']:.1f}s "
          f"({summary['samples_per_s']:.2f} samples/s, {summary['tokens_per_s']:.0f} tokens/s)")
    print(f"mean pass rate {summary['mean_pass_rate']:.3f}: mastered {summary['mastered']}, "
          f"learnable {summary['learnable']}, too hard {summary['too_hard']}")
    print(f"results: {path}")
    return 0
