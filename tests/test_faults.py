"""Reliability under process death (issue 10, items 1–3): a Ray Train worker, a probe actor and the driver itself are
SIGKILLed mid-run, and the run must still finish with exactly the results a clean run would have.

The kills are real `os.kill(pid, SIGKILL)` of the real processes; the processes are found as descendants of this
test process (Ray's raylet and its workers are started by this process), never by name across the machine.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import ray.cloudpickle

from processes import end_session  # tests/processes.py
from toolace_r import io as rio
from toolace_r.config import BuiltinPoolConfig, Config, load_config
from toolace_r.data.pool import load_builtin
from toolace_r.probe import ProbeActor, probe, read_probe
from toolace_r.testing import KILL_AFTER_STAGE_ENV
from toolace_r.train import rows_from_samples, train

REPO = Path(__file__).resolve().parents[1]

# Ray workers cannot import this test module by name: ship the probe actor subclass by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _descendants(title_part: str) -> list[psutil.Process]:
    """Processes under this one whose command line (Ray sets it to `ray::ClassName...`) contains `title_part`."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if title_part in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


# ------------------------------------------------------------------------------------------------ 1. training worker
def _read_metrics(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # the live file is appended to; a line may be mid-write
            pass
    return out


@pytest.mark.slow
@pytest.mark.timeout(420)
def _run_to_end(cmd: list[str], env: dict, log_path: Path, timeout: float) -> tuple[int, str]:
    """Run the command in a session of its own until it exits (its Ray dies with the session); → (exit code, output)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        finally:
            end_session(proc.pid, term_grace_s=0)
    return rc, log_path.read_text()


def test_training_worker_killed_resumes_from_last_checkpoint(ray_local, tiny_model_dir, tmp_path):
    """SIGKILL one of the two RayTrainWorker processes after step ≥ 8 (checkpoints every 5): Ray Train restarts the
    group from the last checkpoint, the run ends with the configured step count, and the loss curve has every step
    exactly once, with at most checkpoint_every steps redone."""
    train_samples, _ = load_builtin(BuiltinPoolConfig(n_train=40, n_heldout=5, seed=3))
    rows = rows_from_samples(train_samples[:16], "compact")
    every, total, kill_after = 5, 40, 8
    cfg = load_config(None, [
        "model.prompt_style=compact", "train.zero_stage=2", "train.num_workers=2", "train.cpus_per_worker=1",
        "train.epochs=100", f"train.max_steps={total}", "train.tokens_per_micro_batch=1024", "train.lr=2e-3",
        "train.warmup_steps=2", f"train.checkpoint_every={every}", "train.max_failures=1",
    ])
    out = tmp_path / "train"
    seen: dict = {"killed_pid": None, "max_step_attempt0": 0, "error": None}
    finished = threading.Event()
    rng = random.Random(10)

    def killer():
        try:
            while not finished.is_set():
                records = [r for r in _read_metrics(out / "metrics.jsonl") if r.get("attempt") == 0]
                if records:
                    seen["max_step_attempt0"] = max(seen["max_step_attempt0"], max(r["step"] for r in records))
                if seen["killed_pid"] is None and seen["max_step_attempt0"] >= kill_after:
                    workers = sorted(_descendants("RayTrainWorker"), key=lambda p: p.pid)
                    if len(workers) == 2:
                        victim = rng.choice(workers)
                        seen["cmd"] = victim.cmdline()
                        os.kill(victim.pid, signal.SIGKILL)
                        seen["killed_pid"] = victim.pid
                        seen["killed"] = (time.time(), seen["cmd"], [w.pid for w in workers])
                time.sleep(0.05)
        except Exception as err:  # surfaced by the test below
            seen["error"] = repr(err)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        result = train(cfg, str(tiny_model_dir), rows, str(out))
    finally:
        finished.set()
        thread.join(timeout=10)
    assert seen["error"] is None, seen["error"]
    assert seen["killed_pid"] is not None, f"training ended before a worker could be killed: {seen}"
    assert not psutil.pid_exists(seen["killed_pid"]) or psutil.Process(seen["killed_pid"]).status() == "zombie"
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert result["restarts"] == 1 and result["steps"] == total, (seen, result, [(r["step"], r["attempt"]) for r in records])
    assert [r["step"] for r in records] == list(range(1, total + 1))  # no gap, no step twice in the curve
    resumed_from = next(r["step"] for r in records if r["attempt"] == 1) - 1
    assert resumed_from % every == 0 and resumed_from >= every  # a real checkpoint, not a restart from 0
    redone = seen["max_step_attempt0"] - resumed_from
    assert 0 <= redone <= every, (seen, resumed_from)
    assert all(r["loss"] == r["loss"] and r["loss"] > 0 for r in records)  # finite losses throughout
    assert (Path(result["model_dir"]) / "config.json").is_file()
    _FAULTS.append(("training worker SIGKILL", 1, f"resumed at step {resumed_from} (killed after step "
                    f"{seen['max_step_attempt0']}), {total}/{total} steps"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_driver_killed_mid_training_resumes_the_stage_from_its_checkpoint(tiny_model_dir, tmp_path):
    """SIGKILL the whole driver (`toolace-r train`, its own Ray with it) once step >= 8 is logged, checkpoints every 5
    steps, then rerun the same command: the Ray Train run name derives from OUT, the stage key and the inputs, so the
    rerun resumes that run at its last checkpoint (not at step 0), loses at most checkpoint_every steps, and ends with
    the step count the uninterrupted attempt had planned, every step in the curve exactly once."""
    train_samples, _ = load_builtin(BuiltinPoolConfig(n_train=40, n_heldout=5, seed=3))
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows_from_samples(train_samples[:16], "compact")))
    every, kill_after = 5, 8
    out = tmp_path / "train"
    cmd = [sys.executable, "-m", "toolace_r.cli", "train", "--data", str(data), "--out", str(out),
           f"model.path={tiny_model_dir}", "model.prompt_style=compact", f"run.dir={tmp_path / 'run'}", "run.num_cpus=2",
           "train.zero_stage=2", "train.num_workers=2", "train.cpus_per_worker=1", "train.epochs=20",
           "train.tokens_per_micro_batch=1024", "train.lr=2e-3", "train.warmup_steps=2",
           f"train.checkpoint_every={every}", "train.max_failures=0"]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", KILL_AFTER_STAGE_ENV)}
    env["PYTHONPATH"] = str(REPO)
    with open(tmp_path / "attempt1.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        planned, reached = None, 0
        try:
            while proc.poll() is None and reached < kill_after:
                reached = max([r["step"] for r in _read_metrics(out / "metrics.jsonl")] or [0])
                try:
                    planned = json.loads((out / ".progress.json").read_text())["total"]
                except (OSError, ValueError, KeyError):
                    pass
                time.sleep(0.05)
            assert proc.poll() is None, f"the first attempt ended before step {kill_after}: " + \
                (tmp_path / "attempt1.log").read_text()[-3000:]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            end_session(proc.pid, term_grace_s=0)  # its Ray (GCS, raylet, the Train workers) dies with it
    killed_at = max(r["step"] for r in _read_metrics(out / "metrics.jsonl"))
    assert planned and killed_at >= kill_after

    rc, rerun_log = _run_to_end(cmd, env, tmp_path / "attempt2.log", timeout=420)
    assert rc == 0, rerun_log[-4000:]
    summary = json.loads((out / "train_summary.json").read_text())
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == planned and summary["restarts"] == 1, (planned, summary)
    assert [r["step"] for r in records] == list(range(1, planned + 1))  # no gap, no step twice
    resumed_from = next(r["step"] for r in records if r["attempt"] == 1) - 1
    assert resumed_from % every == 0 and resumed_from >= every  # a checkpoint of the killed run, not step 0
    assert 0 <= killed_at - resumed_from <= every, (killed_at, resumed_from)
    assert len(list((out / "ray_train").iterdir())) == 1  # both attempts used the same Ray Train run
    assert (Path(summary["model_dir"]) / "config.json").is_file()
    _FAULTS.append(("driver SIGKILL mid-training", 1, f"rerun resumed at step {resumed_from} (killed after step "
                    f"{killed_at}), {summary['steps']}/{planned} steps"))


# ------------------------------------------------------------------------------------------------ 2. probe actor
class BatchLoggingActor(ProbeActor):
    """The real probe actor, appending `pid n_rows` to `log_path` after every batch it returns, so the test knows
    which process to kill and when the probe is under way."""

    log_path = ""

    def __call__(self, batch):
        table = super().__call__(batch)
        with open(self.log_path, "a") as f:
            f.write(f"{os.getpid()} {table.num_rows}\n")
        return table


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_probe_actor_killed_every_sample_gets_exactly_one_row(ray_local, tiny_model_dir, tmp_path):
    """SIGKILL the probe actor's process after it has returned 2 of 12 batches: the actor is restarted, its lost
    batches rerun, and the output holds one row per sample — none missing, none twice."""
    samples, _ = load_builtin(BuiltinPoolConfig(n_train=48, n_heldout=5, seed=2))
    cfg = Config()
    cfg.probe.k, cfg.probe.num_actors, cfg.probe.cpus_per_actor, cfg.probe.batch_size = 2, 1, 1.0, 4
    cfg.probe.generation.max_new_tokens = 24
    log_path = tmp_path / "batches.log"
    actor = type("LoggingActor", (BatchLoggingActor,), {"log_path": str(log_path)})
    killed: list[int] = []
    finished = threading.Event()

    def killer():
        while not finished.is_set() and not killed:
            lines = log_path.read_text().splitlines() if log_path.exists() else []
            if len(lines) >= 2:
                pid = int(lines[-1].split()[0])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        path = probe(cfg, str(tiny_model_dir), samples, tmp_path / "probe", actor_cls=actor)
    finally:
        finished.set()
        thread.join(timeout=10)
    assert killed, "the probe finished before its actor could be killed"
    pids = [int(line.split()[0]) for line in log_path.read_text().splitlines()]
    assert len(set(pids)) >= 2 and pids[-1] != killed[0]  # a new actor process finished the work
    rows = read_probe(path)
    counts = Counter(r["id"] for r in rows)
    assert sorted(counts) == sorted(s.id for s in samples)  # none missing
    assert max(counts.values()) == 1  # none twice
    assert all(r["k"] == 2 and len(r["answers"]) == 2 and len(r["verdicts"]) == 2 for r in rows)
    _FAULTS.append(("probe actor SIGKILL", 1, f"actor restarted, {len(rows)}/{len(samples)} samples, 0 duplicates"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_driver_killed_mid_probe_probes_only_the_rest(ray_local, tiny_model_dir, tmp_path):
    """SIGKILL the whole driver (`toolace-r probe`, its own Ray with it) once some fixed batches are written, rerun the
    same command: the rerun keeps the batches already written, probes only the others, and the result has every
    sample exactly once, in input order, with the answers of a probe that was never interrupted."""
    from toolace_r.data.pool import load_pool_result

    overrides = [f"model.path={tiny_model_dir}", "model.prompt_style=compact", "pool.builtin.n_train=96",
                 "pool.builtin.n_heldout=0", "probe.k=2", "probe.batch_size=4", "probe.num_actors=1",
                 "probe.generation.max_new_tokens=48"]
    out = tmp_path / "probe"
    cmd = [sys.executable, "-m", "toolace_r.cli", "probe", "--out", str(out), f"run.dir={tmp_path / 'run'}",
           "run.num_cpus=2", *overrides]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", KILL_AFTER_STAGE_ENV)}
    env["PYTHONPATH"] = str(REPO)
    import pyarrow.parquet as pq

    def finished_rows() -> int:
        n = 0
        for f in tmp_path.glob(".probe.partial-*/*.parquet"):
            try:
                n += pq.read_metadata(f).num_rows
            except Exception:  # noqa: BLE001 - still being written
                pass
        return n

    with open(tmp_path / "attempt1.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None and finished_rows() < 16:
                time.sleep(0.05)
            assert proc.poll() is None, "the probe ended before it could be killed: " + \
                (tmp_path / "attempt1.log").read_text()[-3000:]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            end_session(proc.pid, term_grace_s=0)
    kept = finished_rows()
    assert 16 <= kept < 96 and not out.exists()

    rc, rerun_log = _run_to_end(cmd, env, tmp_path / "attempt2.log", timeout=400)
    assert rc == 0, rerun_log[-4000:]
    logs = rerun_log + "".join(f.read_text(errors="replace") for f in (tmp_path / "run" / "logs").glob("*.log"))
    assert "were probed before, probing the rest" in logs
    rows = read_probe(out)
    cfg = load_config(None, overrides)
    samples = load_pool_result(cfg.pool).samples
    assert [r["id"] for r in rows] == [s.id for s in samples]  # each sample once, in input order
    assert not list(tmp_path.glob(".probe.partial-*"))  # renamed into place
    reference = read_probe(probe(cfg, str(tiny_model_dir), samples, tmp_path / "reference"))
    assert rows == reference  # the same answers as a probe never interrupted
    _FAULTS.append(("driver SIGKILL mid-probe", 1, f"rerun kept {kept} of {len(samples)} samples, probed the rest; "
                    "each sample once, answers as uninterrupted"))


# ------------------------------------------------------------------------------------------------ 3. driver
def tiny_run_overrides(run_dir: Path) -> list[str]:
    """The smallest real run: 60-sample pool, 20 held out, tiny model, k=2, two iterations, 6 training steps."""
    return [
        f"run.dir={run_dir}", "run.max_iterations=2", "run.num_cpus=2", "run.stop_when_selection_stalls=false",
        "run.stop_when_accuracy_stalls=false",
        "model.prompt_style=compact", "model.tiny.vocab_size=512", "model.tiny.hidden_size=64",
        "model.tiny.num_layers=2", "model.tiny.intermediate_size=128",
        "pool.builtin.n_train=60", "pool.builtin.n_heldout=20",
        "probe.k=2", "probe.batch_size=8", "probe.generation.max_new_tokens=32", "eval.generation.max_new_tokens=32",
        "eval.max_rounds=2", "eval.limit=20", "select.seed_fraction=0.5", "train.num_workers=1",
        "train.max_steps=6", "train.tokens_per_micro_batch=2048", "train.warmup_steps=1", "train.checkpoint_every=3",
    ]


def _stage_outputs(run_dir: Path, key: str) -> list[Path]:
    """Where a stage writes. Those of the stage in flight at a kill may be partial: the rerun redoes that stage and
    clears them first, so they are never read back."""
    if key == "base_model":
        return [run_dir / "base_model"]
    if key == "baseline/eval":
        return [run_dir / "baseline"]
    it, stage = key.split("/")
    d = run_dir / it
    return {
        "probe": [d / "probe"], "select": [d / "selection.json"], "corpus": [d / "corpus.jsonl"],
        "train": [d / "metrics.jsonl", d / "train_metrics.jsonl", d / "train_summary.json", d / "model", d / "ray_train"],
        "eval": [d / "eval", d / "eval.json"],
    }.get(stage, [])


def _check_run_dir_readable(run_dir: Path) -> int:
    """Every JSON/JSONL/YAML file and parquet dir a rerun could read back parses; returns how many were checked.
    Skipped: temp names of atomic writes (dot files/dirs, renamed into place only when complete), the outputs of
    the stage that was in flight (redone; a train stage resumes from its last Ray Train checkpoint), Ray Train's own
    storage."""
    import pyarrow.parquet as pq
    from omegaconf import OmegaConf

    state = rio.read_json(run_dir / "state.json")
    events = Counter((h["stage"], h["event"]) for h in state["history"])
    in_flight = {s for (s, e) in events if e == "start" and s not in state["stages"]}
    skip = [p for key in in_flight for p in _stage_outputs(run_dir, key)]
    checked = 0
    parquet_dirs = set()
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir)
        if any(part.startswith(".") for part in rel.parts) or "ray_train" in rel.parts:
            continue
        if any(path == s or s in path.parents for s in skip):
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            rio.read_jsonl(path)
        elif path.suffix == ".yaml":
            OmegaConf.load(path)
        elif path.suffix == ".parquet":
            pq.read_table(path)
            parquet_dirs.add(path.parent)
        else:
            continue
        checked += 1
    for d in parquet_dirs:  # the way the driver reads them back: probe.read_probe / pandas over the dir's files
        assert read_probe(d)
    return checked


def _state(run_dir: Path) -> dict | None:
    return rio.read_json(run_dir / "state.json") if (run_dir / "state.json").is_file() else None


def _kill_inside_stage(proc: subprocess.Popen, run_dir: Path, history_before: int, nth: int, delay: float) -> int:
    """SIGKILL the driver `delay` s after the `nth` stage start recorded by this attempt (or let it exit)."""
    while proc.poll() is None:
        state = _state(run_dir)
        starts = [h for h in (state["history"][history_before:] if state else []) if h["event"] == "start"]
        if len(starts) >= nth:
            try:
                return proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                return proc.wait(timeout=30)
        time.sleep(0.1)
    return proc.returncode


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_driver_killed_repeatedly_at_boundaries_and_inside_stages(tmp_path):
    """One run dir, the driver SIGKILLed 6 times — 3 times right after a stage is recorded finished (the test hook
    TOOLACE_TEST_KILL_AFTER_STAGE), 3 times at seeded random moments inside stages — and rerun each time until it
    completes.
    After every kill all files a rerun could read parse; at the end each stage finished exactly once and kept the
    result it first recorded."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "toolace_r.cli", "run", *tiny_run_overrides(run_dir)]
    rng = random.Random(20261125)
    # Per attempt: "boundary" = kill right after the next not-yet-finished stage of `boundaries` is recorded (picked
    # at run time, so a timed kill that got further than expected cannot make it miss); (n, s) = kill s seconds after
    # the n-th stage this attempt starts, inside a stage rather than in the (load-dependent) Ray start-up.
    plan = ["boundary", (1, rng.uniform(0.5, 5)), "boundary", (2, rng.uniform(0.5, 8)), "boundary",
            (1, rng.uniform(2, 10))]
    boundaries = ["base_model", "iter_000/train", "iter_001/probe", "iter_001/corpus", "iter_001/train",
                  "iter_001/eval"]
    base_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", KILL_AFTER_STAGE_ENV)}
    base_env["PYTHONPATH"] = str(REPO)
    finished_at: dict[str, float] = {}
    kills, outcomes, attempts = 0, [], 0
    t0 = time.time()
    while True:
        attempts += 1
        assert attempts <= len(plan) + 3, f"run did not complete after {attempts - 1} attempts: {outcomes}"
        step = plan[attempts - 1] if attempts <= len(plan) else None
        done = (_state(run_dir) or {}).get("stages", {})
        boundary = next(b for b in boundaries if b not in done) if step == "boundary" else None
        timed = step if isinstance(step, tuple) else None
        history_before = len(_state(run_dir)["history"]) if _state(run_dir) else 0
        env = dict(base_env, **({KILL_AFTER_STAGE_ENV: boundary} if boundary else {}))
        with open(tmp_path / f"attempt{attempts}.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=600) if timed is None else _kill_inside_stage(proc, run_dir, history_before, *timed)
            finally:
                end_session(proc.pid, term_grace_s=0)
        state = _state(run_dir)
        if rc == 0:
            outcomes.append("completed")
            break
        assert rc == -signal.SIGKILL, (rc, (tmp_path / f"attempt{attempts}.log").read_text()[-4000:])
        kills += 1
        in_flight = [] if state is None else [h["stage"] for h in state["history"] if h["stage"] not in state["stages"]]
        outcomes.append(f"killed after {boundary}" if boundary else
                        f"killed {timed[1]:.1f}s into stage #{timed[0]} of the attempt"
                        f"{' (' + in_flight[-1] + ')' if in_flight else ''}")
        if boundary:  # the hook fired: the stage was recorded finished just before the kill
            assert state is not None and boundary in state["stages"], outcomes
        if state is not None:
            _check_run_dir_readable(run_dir)
            for key, entry in state["stages"].items():  # a stage once finished is never redone or rewritten
                assert finished_at.setdefault(key, entry["finished_at"]) == entry["finished_at"], key
    assert kills >= 5, outcomes

    state = rio.read_json(run_dir / "state.json")
    history = [(h["stage"], h["event"]) for h in state["history"]]
    for key in state["stages"]:
        assert history.count((key, "finish")) == 1, (key, history)
    for key, t in finished_at.items():
        assert state["stages"][key]["finished_at"] == t, key
    assert {"iter_000/train", "iter_001/probe", "iter_001/train", "iter_001/eval"} <= state["stages"].keys()
    assert "max_iterations" in state["stopped"]["reason"]
    assert _check_run_dir_readable(run_dir) >= 10
    report = rio.read_json(run_dir / "report.json")
    assert [e["iteration"] for e in report["iterations"]] == [0, 1]
    probe_rows = read_probe(state["stages"]["iter_001/probe"]["result"]["path"])
    assert len(probe_rows) == len({r["id"] for r in probe_rows}) == state["stages"]["pool"]["result"]["pool_size"]
    redone = sum(history.count((k, "start")) - 1 for k in state["stages"])
    _FAULTS.append(("driver SIGKILL (3 at stage boundaries, 3 at random times)", kills,
                    f"completed on attempt {attempts} in {time.time() - t0:.0f}s; {redone} unfinished stage(s) "
                    f"restarted, 0 finished stages redone; " + "; ".join(outcomes)))


_FAULTS: list[tuple[str, int, str]] = []


@pytest.fixture(scope="module", autouse=True)
def _print_fault_table():
    """The rows for benchmarks/RESULTS.md ("Reliability: faults injected"), printed at the end (pytest -s)."""
    yield
    for fault, times, outcome in _FAULTS:
        print(f"| {fault} | {times} | {outcome} |")
