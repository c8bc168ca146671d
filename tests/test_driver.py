"""The iterative driver: resume bookkeeping and stop criteria (fast, no Ray), then end-to-end runs (slow):
a driver SIGKILLed during training and rerun, and the job run through `ray job submit` on a local head node."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from processes import end_session, free_port, private_node_ports  # tests/processes.py
from toolace_r import io as rio
from toolace_r.config import RunConfig, load_config, to_yaml
from toolace_r.driver import (
    RunState, accuracy_stalled, check_decision_config, choose_final_model, config_differences, prepare_run_dir,
    run_stage, stop_after_eval, stop_after_select, summarize_probe,
)
from toolace_r.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
# Ray's answer to a submission that reached the head before its job agent registered (nothing was started).
NO_JOB_AGENT = "No available agent to submit job"


# ------------------------------------------------------------------------------------------------ stop criteria
def test_accuracy_stalled_counts_iterations_since_the_best():
    assert not accuracy_stalled([], 1)
    assert not accuracy_stalled([0.3], 1)
    assert not accuracy_stalled([0.3, 0.4], 1)
    assert accuracy_stalled([0.3, 0.3], 1)  # a tie is not an improvement
    assert accuracy_stalled([0.3, 0.5, 0.4], 1)
    assert not accuracy_stalled([0.3, 0.5, 0.4], 2)
    assert accuracy_stalled([0.3, 0.5, 0.4, 0.45], 2)


def test_stop_after_eval_max_iterations_and_patience():
    cfg = RunConfig(max_iterations=3, stop_when_accuracy_stalls=False)
    assert stop_after_eval(cfg, 0, [0.2]) is None
    assert stop_after_eval(cfg, 1, [0.2, 0.1]) is None  # stalled, but that criterion is off
    assert "max_iterations" in stop_after_eval(cfg, 2, [0.2, 0.1, 0.3])
    cfg = RunConfig(max_iterations=10, stop_when_accuracy_stalls=True, patience=1)
    assert stop_after_eval(cfg, 1, [0.2, 0.3]) is None
    assert "not improved" in stop_after_eval(cfg, 2, [0.2, 0.3, 0.25])


def test_stop_after_select_growth():
    cfg = RunConfig(stop_when_selection_stalls=True)
    assert stop_after_select(cfg, 0, 10, 10) is None
    assert stop_after_select(cfg, 1, 12, 2) is None
    assert "no longer growing" in stop_after_select(cfg, 2, 12, 0)
    assert "nothing selected" in stop_after_select(cfg, 1, 0, 0)
    assert stop_after_select(RunConfig(stop_when_selection_stalls=False), 2, 12, 0) is None


def test_summarize_probe_histogram_and_counts():
    rows = [{"id": str(i), "k": 4, "pass_rate": p} for i, p in enumerate([0.0, 0.0, 0.25, 0.5, 1.0, 1.0, 1.0])]
    s = summarize_probe(rows)
    assert s["histogram"] == {"bins": [0.0, 0.25, 0.5, 0.75, 1.0], "counts": [2, 1, 1, 0, 3]}
    assert s["counts"] == {"mastered": 3, "learnable": 2, "too_hard": 2}
    assert s["n"] == 7 and abs(s["mean_pass_rate"] - 3.75 / 7) < 1e-9


# ------------------------------------------------------------------------------------------------ resume bookkeeping
def test_run_stage_records_once_and_replays_after_restart(tmp_path):
    calls = []

    def stage_fn(value):
        def fn():
            calls.append(value)
            return {"value": value}
        return fn

    state = RunState(tmp_path)
    assert run_stage(state, tmp_path, "iter_000/select", stage_fn(1)) == {"value": 1}
    state.start("iter_000/train")  # a stage that was running when the process died
    # a new process reads state.json again
    state = RunState(tmp_path)
    assert state.done("iter_000/select") and not state.done("iter_000/train")
    assert run_stage(state, tmp_path, "iter_000/select", stage_fn(2)) == {"value": 1}  # replayed, not rerun
    assert run_stage(state, tmp_path, "iter_000/train", stage_fn(3)) == {"value": 3}
    assert calls == [1, 3]
    events = [(h["stage"], h["event"]) for h in rio.read_json(tmp_path / "state.json")["history"]]
    assert events == [("iter_000/select", "start"), ("iter_000/select", "finish"), ("iter_000/train", "start"),
                      ("iter_000/train", "start"), ("iter_000/train", "finish")]
    assert (tmp_path / "report.json").is_file()  # rebuilt after each stage


def test_run_stage_failure_leaves_stage_unfinished(tmp_path):
    state = RunState(tmp_path)

    def boom():
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        run_stage(state, tmp_path, "iter_000/train", boom)
    assert not RunState(tmp_path).done("iter_000/train")


def test_rerun_with_a_different_config_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_config(None, [f"run.dir={run_dir}", "probe.k=4"])
    prepare_run_dir(cfg)
    assert load_config(run_dir / "config.yaml").probe.k == 4
    # run settings may change (more iterations, another cluster) ...
    prepare_run_dir(load_config(None, [f"run.dir={run_dir}", "probe.k=4", "run.max_iterations=5", "probe.num_actors=2"]))
    # ... what is computed may not
    with pytest.raises(ConfigError, match=r"probe\.k: 4 → 8.*new run\.dir"):
        prepare_run_dir(load_config(None, [f"run.dir={run_dir}"]))


def test_a_run_dir_saved_with_retired_keys_resumes(tmp_path):
    """A run dir whose config.yaml an earlier version wrote, with run.seed and refine.max_rounds (keys that never had
    an effect and are gone), resumes under the same config; a real difference is still refused."""
    import yaml

    run_dir = tmp_path / "run"
    cfg = load_config(None, [f"run.dir={run_dir}", "probe.k=4"])
    prepare_run_dir(cfg)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["run"]["seed"], saved["refine"]["max_rounds"] = 0, 3  # as the schema of that version saved them
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    prepare_run_dir(cfg)
    assert "max_rounds" not in yaml.safe_load((run_dir / "config.yaml").read_text())["refine"]  # saved anew
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=r"probe\.k: 4 → 8") as err:
        prepare_run_dir(load_config(None, [f"run.dir={run_dir}"]))
    assert "seed" not in str(err.value) and "max_rounds" not in str(err.value)


def test_config_differences_splits_safe_and_unsafe():
    unsafe, safe = config_differences({"run": {"dir": "a", "max_iterations": 1}, "train": {"lr": 1.0}},
                                      {"run": {"dir": "b", "max_iterations": 3}, "train": {"lr": 2.0}})
    assert unsafe == ["train.lr"] and safe == ["run.dir", "run.max_iterations"]


# ------------------------------------------------------------------------------------------------ end to end (slow)
def tiny_overrides(run_dir: Path) -> list[str]:
    """A run small enough for a test: 240-sample pool (24 of them the dev split), 40 held out, tiny model, k=2, two
    iterations."""
    return [
        f"run.dir={run_dir}", "run.max_iterations=2", "run.num_cpus=2", "run.stop_when_selection_stalls=false",
        "model.prompt_style=compact", "model.tiny.vocab_size=512", "model.tiny.hidden_size=64",
        "model.tiny.num_layers=2", "model.tiny.intermediate_size=128",
        "pool.builtin.n_train=240", "pool.builtin.n_heldout=40", "pool.dev_size=24",
        "probe.k=2", "probe.generation.max_new_tokens=48", "eval.generation.max_new_tokens=48", "eval.max_rounds=2",
        "eval.limit=40", "select.seed_fraction=0.5", "train.num_workers=1", "train.max_steps=20",
        "train.tokens_per_micro_batch=2048", "train.warmup_steps=2", "train.checkpoint_every=5",
    ]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_ADDRESS="")
    env.pop("RAY_ADDRESS")
    return env


def _toolace(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "toolace_r.cli", "run", *args]


def _wait_for(predicate, timeout: float, what: str, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"driver exited (rc {proc.returncode}) before {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _run_logged(cmd: list[str], log_path: Path, timeout: float, env: dict | None = None) -> tuple[int, str]:
    """Run `cmd` in its own session with output to a file (daemons it spawns may hold on to a pipe); afterwards end
    whatever it left running."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env or _env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        finally:
            end_session(proc.pid)
    return rc, log_path.read_text()


def _history(run_dir: Path) -> list[tuple[str, str]]:
    return [(h["stage"], h["event"]) for h in rio.read_json(run_dir / "state.json")["history"]]


@pytest.mark.slow
def test_driver_killed_during_training_resumes_without_redoing_stages(tmp_path):
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(run_dir)
    log1 = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_toolace(overrides), cwd=REPO, env=_env(), stdout=log1, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        def training_started():
            return (run_dir / "state.json").is_file() and ("iter_000/train", "start") in _history(run_dir)

        _wait_for(training_started, 600, "iteration 0 training to start", proc)
        time.sleep(8)  # let Ray Train get going
        assert proc.poll() is None, "driver finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # the driver process, mid-training
        proc.wait(timeout=30)
    finally:
        end_session(proc.pid)  # whatever of its local Ray did not die with it
        log1.close()
    before = rio.read_json(run_dir / "state.json")
    assert "iter_000/train" not in before["stages"]
    finished_before = {k: v["finished_at"] for k, v in before["stages"].items()}
    assert {"pool", "base_model", "baseline/dev_eval", "iter_000/select", "iter_000/corpus"} <= finished_before.keys()
    assert "baseline/eval" not in finished_before  # the test sets are read only after the loop has stopped

    rc, output = _run_logged(_toolace(overrides), tmp_path / "second.log", timeout=900)
    assert rc == 0, output[-6000:]
    # the dashboard-less local Ray's state API is down; Ray Train's cleaner used to warn about it every second
    assert "Failed to query Ray Train Controller actor state" not in output
    after = rio.read_json(run_dir / "state.json")
    for key, finished_at in finished_before.items():  # finished stages kept their first result, not redone
        assert after["stages"][key]["finished_at"] == finished_at, key
    history = _history(run_dir)
    for key in after["stages"]:
        if key == "pool":
            continue
        starts = history.count((key, "start"))
        assert history.count((key, "finish")) == 1, key
        assert starts == (2 if key == "iter_000/train" else 1), (key, starts)
    for it in (0, 1):
        assert Path(after["stages"][f"iter_{it:03d}/train"]["result"]["model_dir"]).is_dir()
        assert (run_dir / f"iter_{it:03d}" / "eval.json").is_file()
        assert (run_dir / f"iter_{it:03d}" / "dev_eval" / "outputs.jsonl").is_file()
    assert (run_dir / "iter_001" / "selection.json").is_file() and (run_dir / "iter_001" / "corpus.jsonl").is_file()
    report = rio.read_json(run_dir / "report.json")
    assert [e["iteration"] for e in report["iterations"]] == [0, 1]
    for e in report["iterations"]:
        assert set(e["eval"]) >= {"accuracy", "accuracy_ci95", "refined_accuracy", "mean_rounds", "categories"}
        assert e["dev_eval"]["n"] == 24 and e["dev_eval"]["refined_vs_single"] is not None
        assert e["train"]["train_tokens"] > 0 and e["selected"] > 0
    assert report["iterations"][1]["pass_rate_histogram"] is not None
    assert report["baseline"]["accuracy"] is not None and "max_iterations" in report["stopped"]["reason"]
    assert report["final_model"]["iteration"] in (0, 1) and report["final_model"]["reason"].startswith("best dev")
    assert report["final_model"]["test_vs_baseline"]["refined_accuracy"]["n"] == report["baseline"]["n"]
    assert (run_dir / "report.html").is_file()

    # a third run finds everything finished and runs nothing
    rc, output = _run_logged(_toolace(overrides), tmp_path / "third.log", timeout=300)
    assert rc == 0, output[-3000:]
    assert _history(run_dir) == history


@pytest.mark.slow
def test_job_runs_through_ray_job_submit(tmp_path):
    """`ray start --head` on private ports and a private temp dir, `ray job submit -- toolace-r run`, `ray stop`."""
    ray_bin = Path(sys.executable).parent / "ray"
    temp_dir = Path("/tmp") / f"tr_{os.getpid()}"  # Ray's socket paths must stay short
    gcs_port, dash_port, client_port = free_port(), free_port(), free_port()
    env = dict(_env(), RAY_AUTH_MODE="disabled")  # STACK.md: token auth would make the submit CLI fail
    start = [str(ray_bin), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}", "--num-cpus=2",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
             f"--ray-client-server-port={client_port}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
             *private_node_ports()]  # the session's own ray.init() holds the default agent ports
    head_log = open(tmp_path / "ray_start.log", "w")
    head = subprocess.Popen(start, env=env, stdout=head_log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own session: the cleanup below ends exactly this cluster
    try:
        assert head.wait(timeout=180) == 0, (tmp_path / "ray_start.log").read_text()
        run_dir = tmp_path / "run"
        overrides = tiny_overrides(run_dir) + ["run.max_iterations=1", "run.num_cpus=0"]
        # as in the README: the repo is shipped as the job's working dir (.gitignore'd files stay behind)
        submit = [str(ray_bin), "job", "submit", f"--address=http://127.0.0.1:{dash_port}", "--working-dir", str(REPO),
                  "--", sys.executable, "-m", "toolace_r.cli", "run", *overrides]
        for attempt in range(24):  # right after `ray start` the job agent may take minutes to register: no job started
            rc, output = _run_logged(submit, tmp_path / "job.log", timeout=900, env=env)
            if rc == 0 or NO_JOB_AGENT not in output:
                break
            time.sleep(5)
        assert rc == 0, output[-6000:]
        assert "succeeded" in output.lower()
        assert "joining the Ray cluster" in output  # the driver used the job's cluster, not a private Ray
        report = rio.read_json(run_dir / "report.json")
        assert len(report["iterations"]) == 1 and report["iterations"][0]["eval"]["accuracy"] is not None
        assert report["stopped"]["reason"].startswith("max_iterations")
    finally:
        # Not `ray stop`: it would stop every Ray on this machine, other people's too. End this head node's session.
        end_session(head.pid)
        head_log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_pool_stage_records_skipped_bad_records(tmp_path):
    """pool.on_error=skip: the bad record is counted in state.json and the report, the good ones are the pool."""
    import json

    from toolace_r.driver import load_pool_stage
    from toolace_r.report import build_report

    good = {"messages": [{"role": "user", "content": "weather in Paris?"},
                         {"role": "assistant", "tool_calls": [{"type": "function", "function": {
                             "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                      "required": ["city"]}}}]}
    bad = {"messages": "not a list", "tools": []}
    pool_file = tmp_path / "pool.jsonl"
    pool_file.write_text("\n".join(json.dumps(r) for r in (good, bad, good)) + "\n")
    cfg = load_config(None, [f"pool.path={pool_file}", "pool.on_error=skip"])
    state = RunState(tmp_path)
    pool = load_pool_stage(cfg, state, tmp_path)
    assert len(pool) == 2
    result = state.result("pool")
    assert result["records"] == 3 and result["skipped"] == 1
    assert "record 1" in result["skip_examples"][0]
    assert build_report(state.data, tmp_path)["pool_skipped"] == 1


# ------------------------------------------------------------------------------------------------ dev split
def test_dev_split_is_stratified_disjoint_and_stable_for_a_seed():
    import random
    from collections import Counter

    from toolace_r.config import BuiltinPoolConfig
    from toolace_r.data.pool import load_builtin, split_dev

    pool, heldout = load_builtin(BuiltinPoolConfig(n_train=240, n_heldout=40, seed=0))
    train, dev = split_dev(pool, 48, seed=0)
    assert len(dev) == 48 and len(train) == 192
    assert not {s.id for s in train} & {s.id for s in dev}  # disjoint from what the loop trains on
    assert {s.id for s in train} | {s.id for s in dev} == {s.id for s in pool}
    assert not {s.id for s in dev} & {s.id for s in heldout}  # the built-in held-out test split is another set
    whole, part = Counter(s.category for s in pool), Counter(s.category for s in dev)
    for category, n in whole.items():  # each category keeps its share (largest remainder: within one sample)
        assert abs(part[category] - 48 * n / len(pool)) < 1, (category, part[category], n)
    # stable: the same seed gives the same split, whatever order the pool comes in; another seed another split
    shuffled = list(pool)
    random.Random(5).shuffle(shuffled)
    assert {s.id for s in split_dev(shuffled, 48, seed=0)[1]} == {s.id for s in dev}
    assert {s.id for s in split_dev(pool, 48, seed=1)[1]} != {s.id for s in dev}
    assert [s.id for s in train] == [s.id for s in pool if s.id not in {d.id for d in dev}]  # pool order kept
    assert split_dev(pool, 0) == (pool, [])
    with pytest.raises(DataError, match="pool.dev_size"):
        split_dev(pool, 240)


def test_pool_stage_records_the_dev_split_and_refuses_a_changed_one(tmp_path):
    from toolace_r.driver import DEV_FILE, load_pool_stage, pool_fingerprint

    overrides = ["pool.builtin.n_train=100", "pool.builtin.n_heldout=10", "pool.dev_size=20"]
    state = RunState(tmp_path)
    pool, dev = load_pool_stage(load_config(None, overrides), state, tmp_path)
    result = state.result("pool")
    assert len(pool) == result["pool_size"] == 80 and result["loaded_size"] == 100
    assert result["dev_size"] == len(dev) == 20 and result["dev_fingerprint"] == pool_fingerprint(dev)
    assert sum(result["dev_categories"].values()) == 20
    assert [s.id for s in rio.read_samples(tmp_path / DEV_FILE)] == [s.id for s in dev]
    # a resume with the same split goes on; another seed or size is refused like a changed pool
    assert load_pool_stage(load_config(None, overrides), RunState(tmp_path), tmp_path)[1] == dev
    for change in ("pool.dev_seed=1", "pool.dev_size=10"):
        with pytest.raises(DataError, match="dev split changed"):
            load_pool_stage(load_config(None, overrides + [change]), RunState(tmp_path), tmp_path)


def test_accuracy_decisions_need_a_dev_split():
    with pytest.raises(ConfigError, match=r"run\.stop_when_accuracy_stalls.*pool\.dev_size"):
        check_decision_config(load_config(None, ["run.stop_when_accuracy_stalls=true"]))
    check_decision_config(load_config(None, ["run.stop_when_accuracy_stalls=true", "pool.dev_size=10"]))
    check_decision_config(load_config(None, ["run.stop_when_accuracy_stalls=false"]))
    with pytest.raises(ConfigError, match="run.final_model_metric"):
        load_config(None, ["run.final_model_metric=loss"])


def _dev_result(single: float, refined: float, n: int = 20) -> dict:
    return {"overall": {"n": n, "accuracy": single, "refined_accuracy": refined}}


def test_final_model_is_the_best_on_dev_ties_to_the_earlier():
    models = {0: "/m0", 1: "/m1", 2: "/m2"}
    dev = {0: _dev_result(0.2, 0.3), 1: _dev_result(0.5, 0.45), 2: _dev_result(0.4, 0.45)}
    final = choose_final_model(models, dev, "refined_accuracy")
    assert final["iteration"] == 1 and final["model_dir"] == "/m1" and final["value"] == 0.45  # tie with 2 → 1
    assert final["reason"].startswith("best dev refined_accuracy 0.450 [") and "at iteration 1 of 3" in final["reason"]
    assert choose_final_model(models, dev, "accuracy")["iteration"] == 1
    no_dev = choose_final_model(models, {}, "refined_accuracy")
    assert no_dev["iteration"] == 2 and no_dev["metric"] is None and "no dev split" in no_dev["reason"]
    assert choose_final_model({}, {}, "accuracy") is None


# ------------------------------------------------------------------------------------------------ the loop, fast
# Stage functions replaced by fakes (no model, no Ray): what is checked is the driver's order of decisions and reads.
DEV_ACCURACY = {"base": 0.1, 0: 0.3, 1: 0.6, 2: 0.5, 3: 0.9, 4: 0.9}  # single pass; refined = + 1 item
TEST_ACCURACY = {"base": 0.1, 0: 0.2, 1: 0.3, 2: 0.9, 3: 0.9, 4: 0.9}  # test would pick iteration 2: it must not


def _model_key(model_dir: str):
    return "base" if model_dir == "base" else int(Path(model_dir).parent.name[5:])


@pytest.fixture
def fake_stages(monkeypatch):
    """Record every eval-spec load, evaluation and stop check, in order; pools handed to probing and selection."""
    import toolace_r.data.pool as pool_mod
    import toolace_r.driver as driver
    import toolace_r.evaluate as evaluate_mod
    import toolace_r.probe as probe_mod
    from toolace_r.report import write_report

    log = {"events": [], "probed": [], "selected": []}
    real_load_eval_spec = pool_mod.load_eval_spec

    def load_eval_spec(spec, *args, **kwargs):
        log["events"].append(("load", "dev" if spec.endswith("dev.jsonl") else "test", spec))
        return real_load_eval_spec(spec, *args, **kwargs)

    def evaluate(cfg, model_dir, specs, out_dir):
        groups = evaluate_mod.load_groups(cfg, specs)
        kind = "dev" if all(sp.endswith("dev.jsonl") for sp in specs) else "test"
        run_dir = Path(cfg.run.dir)
        final_recorded = bool(rio.read_json(run_dir / "state.json").get("final_model"))
        log["events"].append(("evaluate", kind, _model_key(model_dir), final_recorded))
        acc = (DEV_ACCURACY if kind == "dev" else TEST_ACCURACY)[_model_key(model_dir)]
        outputs = []
        for group, samples in groups.items():
            right = round(acc * len(samples))
            for i, sample in enumerate(sorted(samples, key=lambda x: x.id)):
                outputs.append({"id": sample.id, "group": group, "category": sample.category, "first_answer": "x",
                                "answer": "x", "valid": i < right, "refined_valid": i < right + 1,
                                "refined_error_type": None, "rounds": 1, "tokens": 1, "forward_passes": 1,
                                "time_s": 0.0, "valid_by_round": [i < right]})
        rio.write_jsonl(Path(out_dir) / "outputs.jsonl", outputs)
        return evaluate_mod.summarize(outputs)

    def probe_stage(cfg, model_dir, pool, out):
        log["probed"].append({s.id for s in pool})
        rio.write_json(out / "rows.json", [{"id": s.id, "category": s.category, "k": 2, "n_correct": 1,
                                           "pass_rate": 0.5} for s in pool])
        return {"path": str(out / "rows.json"), "n": len(pool), "k": 2}

    def select_stage(cfg, rows, *args, **kwargs):
        log["selected"].append({r["id"] for r in rows})
        return real_select_stage(cfg, rows, *args, **kwargs)

    def stop_after_eval(run_cfg, iteration, accuracies):
        reason = real_stop_after_eval(run_cfg, iteration, accuracies)
        log["events"].append(("stop_check", iteration, reason))
        return reason

    real_select_stage, real_stop_after_eval = driver.select_stage, driver.stop_after_eval
    monkeypatch.setattr(pool_mod, "load_eval_spec", load_eval_spec)
    monkeypatch.setattr(evaluate_mod, "evaluate", evaluate)
    monkeypatch.setattr(probe_mod, "read_probe", lambda path: rio.read_json(path))
    monkeypatch.setattr("toolace_r.ray_session.start_or_join", lambda cfg: False)
    monkeypatch.setattr(driver, "base_model_stage",
                        lambda cfg, pool, run_dir, publish=str: {"model_dir": "base", "built": False})
    monkeypatch.setattr(driver, "probe_stage", probe_stage)
    monkeypatch.setattr(driver, "select_stage", select_stage)
    monkeypatch.setattr(driver, "corpus_stage", lambda cfg, by_id, rows, ids, style, out: {
        "path": str(out / "corpus.jsonl"), "rows": len(ids), "kinds": {"direct": len(ids)}, "refine_samples": 0})
    monkeypatch.setattr(driver, "train_stage", lambda cfg, model_dir, corpus, out, shared_out="": {
        "model_dir": str(out / "model"), "train_tokens": 100, "steps": 1, "loss_first": 2.0, "loss_last": 1.0})
    monkeypatch.setattr(driver, "stop_after_eval", stop_after_eval)
    monkeypatch.setattr(driver, "write_report", lambda run_dir: write_report(run_dir, plots=False))
    return log


def _fast_cfg(run_dir: Path, *extra: str):
    return load_config(None, [
        f"run.dir={run_dir}", "run.max_iterations=5", "run.stop_when_selection_stalls=false",
        "run.stop_when_accuracy_stalls=true", "run.patience=1", "pool.builtin.n_train=120",
        "pool.builtin.n_heldout=40", "pool.dev_size=30", "eval.limit=4", "select.seed_fraction=0.5", *extra])


def test_dev_decides_and_test_sets_are_read_only_after_the_loop_stopped(tmp_path, fake_stages):
    from toolace_r.driver import DEV_FILE, run

    report = run(_fast_cfg(tmp_path / "run"))
    events = fake_stages["events"]
    # dev rule fired: iteration 1 is best (0.6), iteration 2 (0.5) does not improve on it, patience 1 → stop at 2
    stops = [e for e in events if e[0] == "stop_check"]
    assert [e[1] for e in stops] == [0, 1, 2] and stops[-1][2].startswith("dev refined_accuracy has not improved")
    assert report["stopped"] == {"iteration": 2, "reason": stops[-1][2]}
    # order of reads: every test-set load and evaluation after the last dev read and after the stop decision
    test_at = [i for i, e in enumerate(events) if e[0] in ("load", "evaluate") and e[1] == "test"]
    dev_at = [i for i, e in enumerate(events) if e[0] in ("load", "evaluate") and e[1] == "dev"]
    assert test_at and dev_at
    assert min(test_at) > max(dev_at) and min(test_at) > events.index(stops[-1])
    assert all(e[3] for e in events if e[0] == "evaluate" and e[1] == "test")  # the choice was recorded first
    assert [e[2] for e in events if e[0] == "evaluate"] == ["base", 0, 1, 2, "base", 0, 1, 2]  # dev…, then test…
    # the final model is the best on dev (iteration 1), not the last (2), nor the best on test (2)
    final = report["final_model"]
    assert final["iteration"] == 1 and final["model_dir"].endswith("iter_001/model")
    assert final["metric"] == "refined_accuracy" and "at iteration 1 of 3" in final["reason"]
    assert final["dev"]["refined_accuracy"] == report["iterations"][1]["dev_eval"]["refined_accuracy"]
    assert [e["final"] for e in report["iterations"]] == [False, True, False]
    assert report["final_model_dir"] == final["model_dir"]
    # the test curve is still there for every iteration, on the held-out split, plus the paired test vs untrained
    test_curve = [e["eval"]["refined_accuracy"] for e in report["iterations"]]
    assert max(test_curve) == test_curve[2] > test_curve[1]  # on test, iteration 2 would have looked best
    assert final["test_vs_baseline"]["accuracy"]["n"] == report["baseline"]["n"]
    # outputs where the ablation module and people look for them
    run_dir = tmp_path / "run"
    for it in range(3):
        assert (run_dir / f"iter_{it:03d}" / "eval" / "outputs.jsonl").is_file()
        assert (run_dir / f"iter_{it:03d}" / "eval.json").is_file()
        assert (run_dir / f"iter_{it:03d}" / "dev_eval" / "outputs.jsonl").is_file()
    assert (run_dir / "baseline" / "eval" / "outputs.jsonl").is_file()
    assert report["iterations"][0]["dev_eval"]["n"] == 30  # the whole dev split: eval.limit cuts test sets only
    # dev is disjoint from what the loop probed and selected from
    dev_ids = {s.id for s in rio.read_samples(run_dir / DEV_FILE)}
    assert len(dev_ids) == 30 and report["dev"]["size"] == 30 and report["pool_size"] == 90
    assert all(not (ids & dev_ids) for ids in fake_stages["probed"] + fake_stages["selected"])
    assert all(len(ids) == 90 for ids in fake_stages["probed"])

    # a rerun replays every finished stage: nothing is evaluated again, the same choice comes back
    history = rio.read_json(run_dir / "state.json")["history"]
    events.clear()
    again = run(_fast_cfg(tmp_path / "run"))
    assert not [e for e in events if e[0] == "evaluate"]
    assert rio.read_json(run_dir / "state.json")["history"] == history
    assert again["final_model"]["iteration"] == 1 and again["final_model"]["reason"] == final["reason"]


def test_test_sets_only_for_the_final_model_when_asked(tmp_path, fake_stages):
    from toolace_r.driver import run

    report = run(_fast_cfg(tmp_path / "run", "run.test_every_iteration=false"))
    events = fake_stages["events"]
    # dev: base and every iteration; test: the untrained model and the final one (iteration 1) only
    assert [e[2] for e in events if e[0] == "evaluate"] == ["base", 0, 1, 2, "base", 1]
    assert [e["eval"] is not None for e in report["iterations"]] == [False, True, False]
    assert report["final_model"]["test"]["accuracy"] == report["iterations"][1]["eval"]["accuracy"]
    assert report["final_model"]["test_vs_baseline"]["accuracy"]["n"] == report["baseline"]["n"]


def test_without_a_dev_split_the_last_model_is_final_and_no_accuracy_decides(tmp_path, fake_stages):
    from toolace_r.driver import run

    with pytest.raises(ConfigError, match="pool.dev_size"):
        run(_fast_cfg(tmp_path / "refused", "pool.dev_size=0"))
    report = run(_fast_cfg(tmp_path / "run", "pool.dev_size=0", "run.stop_when_accuracy_stalls=false",
                           "run.max_iterations=2"))
    events = fake_stages["events"]
    assert not [e for e in events if e[0] in ("load", "evaluate") and e[1] == "dev"]
    assert [e[2] for e in events if e[0] == "evaluate"] == ["base", 0, 1]  # test sets only, after the loop
    assert min(i for i, e in enumerate(events) if e[0] == "evaluate") > max(
        i for i, e in enumerate(events) if e[0] == "stop_check")
    final = report["final_model"]
    assert final["iteration"] == 1 and final["metric"] is None and "no dev split" in final["reason"]
    assert report["dev"] is None and all(e["dev_eval"] is None for e in report["iterations"])
