"""ray_session.start_or_join, the one place that calls ray.init: what each kind of caller asks Ray for, and that a
Ray already up is left alone (the caller that started Ray is the one that stops it)."""
from __future__ import annotations

import importlib

import pytest
import ray

from toolace_r import console, ray_session
from toolace_r.config import load_config


@pytest.fixture
def inits(monkeypatch, tmp_path):
    """ray.init recorded instead of called; Ray counts as down; the console's log plumbing stubbed."""
    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(console, "log_to_dir", lambda path: tmp_path / "logs")
    monkeypatch.setattr(console, "redirect_native_stderr", lambda log_dir: None)
    monkeypatch.setattr(console, "worker_log_routing_available", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


def test_a_ray_already_up_is_left_alone(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("ray.init called with Ray up"))
    cfg = load_config(None, ["run.num_cpus=3"])
    assert ray_session.start_or_join(cfg) is False
    assert ray_session.start_or_join(cfg, service=True) is False


def test_a_job_starts_a_private_local_ray(inits, tmp_path):
    assert ray_session.start_or_join(load_config(None, [f"run.dir={tmp_path}", "run.num_cpus=3"])) is True
    (kw,) = inits
    assert kw["address"] == "local" and kw["num_cpus"] == 3 and kw["include_dashboard"] is False
    assert kw["log_to_driver"] is False  # worker output routed to RUN_DIR/logs, or left in Ray's session logs
    module, func = kw["runtime_env"]["worker_process_setup_hook"].rsplit(".", 1)
    assert callable(getattr(importlib.import_module(module), func))  # the hook a worker imports exists


def test_a_job_joins_the_cluster_it_is_given(inits, tmp_path, monkeypatch):
    ray_session.start_or_join(load_config(None, [f"run.dir={tmp_path}", "run.ray_address=ray://head:10001"]))
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")  # inside `ray job submit`
    ray_session.start_or_join(load_config(None, [f"run.dir={tmp_path}", "run.num_cpus=3"]))
    assert inits == [{"address": "ray://head:10001", "log_to_driver": False},
                     {"address": "http://head:8265", "log_to_driver": False}]


def test_a_service_keeps_ray_on_its_terminal_and_takes_ray_inits_default(inits, monkeypatch):
    monkeypatch.setattr(console, "log_to_dir", lambda path: pytest.fail("a service's Ray output went to a log dir"))
    assert ray_session.start_or_join(load_config(None, ["run.num_cpus=3"]), service=True) is True
    ray_session.start_or_join(load_config(None, ["run.ray_address=auto"]), service=True)
    assert inits == [{"address": None, "include_dashboard": False}, {"address": "auto", "include_dashboard": False}]
