"""Multi-node on one machine: a real two-node Ray cluster on 127.0.0.1, the demo job submitted to it the way an
operator submits to a cloud cluster (cluster/README.md), training workers and probe actors spread over both nodes.

Head: `ray start --head --num-cpus 1`; second node: `ray start --address HEAD --num-cpus 1`; private ports and a
private temp dir, token authentication on (as Ray 2.60 clusters run) with a token made for this test. With one CPU
per node, two one-CPU training workers (`train.placement_strategy=SPREAD`) and two one-CPU probe actors can only run
one per node, and Ray's state API (`ray list actors --detail`, which keeps finished actors with their node id) shows
where each ran. Cleanup ends exactly the processes of the two `ray start` sessions — never `ray stop`, which would
stop every Ray on this machine, other people's too.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from processes import end_session, free_port, private_node_ports, session_pids  # tests/processes.py
from toolace_r import io as rio

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"


class TwoNodeCluster:
    """A head node and a second node on 127.0.0.1, one CPU each, every port chosen free, a temp dir per node.

    Each node gets its own temp dir, as separate machines would: runtime environments (the job's working_dir) are
    unpacked under the temp dir by each node's agent, and two agents sharing one directory replace each other's
    files under a running job."""

    def __init__(self, workdir: Path):
        self.temp_root = Path("/tmp") / f"tr2n_{os.getpid()}_{secrets.token_hex(3)}"  # Ray socket paths must be short
        self.logs = workdir
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.sessions: list[int] = []
        self.env = dict(os.environ, PYTHONPATH=str(REPO), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
                        PATH=f"{RAY.parent}{os.pathsep}{os.environ.get('PATH', '')}")  # `toolace-r` for the job
        self.env.pop("RAY_ADDRESS", None)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str]) -> None:
        cmd = [str(RAY), "start", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=300000000",
               f"--temp-dir={self.temp_root / name}", "--disable-usage-stats", *private_node_ports(), *args]
        with open(self.logs / f"ray_start_{name}.log", "w") as log:
            proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.sessions.append(proc.pid)
            rc = proc.wait(timeout=180)
        assert rc == 0, f"ray start ({name}) failed:\n" + (self.logs / f"ray_start_{name}.log").read_text()[-4000:]

    def start(self) -> None:
        self._start("head", ["--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                             f"--ray-client-server-port={free_port()}"])
        self._start("node2", [f"--address=127.0.0.1:{self.gcs_port}"])

    def ray_cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(RAY), *args], env=self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)

    def state(self, resource: str) -> list[dict]:
        """`ray list <resource> --detail` as JSON, from the head's dashboard (finished actors included)."""
        out = self.ray_cli("list", resource, f"--address={self.dashboard}", "--detail", "--format=json",
                           "--limit=10000")
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout)

    def stop(self) -> None:
        for sid in reversed(self.sessions):
            end_session(sid)
        shutil.rmtree(self.temp_root, ignore_errors=True)


def tiny_two_node_overrides(tmp_path: Path) -> list[str]:
    """The demo job, shrunk to minutes: a from-scratch tiny model (not the demo's pre-trained base) and a tiny pool
    with a 10-sample dev split, one iteration that probes, trains and evaluates.
    Run dir and Ray Train storage given as file:// URIs (the form a cluster's shared storage takes)."""
    return [
        f"run.dir=file://{tmp_path}/run", f"train.storage_path=file://{tmp_path}/ray_train",
        "run.max_iterations=1", "run.probe_first_iteration=true", "run.stop_when_selection_stalls=false",
        "model.path=tiny", "model.prompt_style=compact", "model.tiny.vocab_size=512", "model.tiny.hidden_size=64",
        "model.tiny.num_layers=2", "model.tiny.intermediate_size=128",
        "pool.builtin.n_train=80", "pool.builtin.n_heldout=10", "pool.dev_size=10",
        "probe.k=2", "probe.num_actors=2", "probe.cpus_per_actor=1", "probe.batch_size=4",
        "probe.generation.max_new_tokens=24", "eval.generation.max_new_tokens=24", "eval.max_rounds=1",
        "eval.limit=10", "eval.num_actors=1",
        "train.num_workers=2", "train.cpus_per_worker=1", "train.placement_strategy=SPREAD",
        "train.max_steps=4", "train.tokens_per_micro_batch=1024", "train.warmup_steps=1", "train.checkpoint_every=2",
    ]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_job_spreads_training_and_probing_over_two_nodes(tmp_path):
    cluster = TwoNodeCluster(tmp_path)
    try:
        cluster.start()
        nodes = [n for n in cluster.state("nodes") if n["state"] == "ALIVE"]
        assert len(nodes) == 2, nodes
        node_ids = {n["node_id"] for n in nodes}
        head_id = next(n["node_id"] for n in nodes if n["is_head_node"])

        # Exactly the operator's command (cluster/README.md), with the demo config and test-sized overrides.
        for attempt in range(24):  # right after `ray start` the job agent may take minutes to register: no job started
            submit = cluster.ray_cli("job", "submit", f"--address={cluster.dashboard}", "--working-dir", ".", "--",
                                     "toolace-r", "run", "--config", "jobs/demo.yaml",
                                     *tiny_two_node_overrides(tmp_path), timeout=1000)
            output = submit.stdout + submit.stderr
            if submit.returncode == 0 or "No available agent to submit job" not in output:
                break
            time.sleep(5)
        (tmp_path / "job.log").write_text(output)
        assert submit.returncode == 0, output[-8000:]
        assert "succeeded" in output.lower(), output[-3000:]
        assert "joining the Ray cluster" in output, "the driver must use the submitted-to cluster, not a private Ray"

        # The run finished: a report with the iteration's probe, training and evaluation.
        report = rio.read_json(tmp_path / "run" / "report.json")
        assert report["stopped"]["reason"].startswith("max_iterations"), report["stopped"]
        (it,) = report["iterations"]
        assert it["eval"]["accuracy"] is not None and it["train"]["train_tokens"] > 0
        assert it["pass_rate_histogram"] is not None, "iteration 0 must have been probed"
        assert list((tmp_path / "ray_train").iterdir()), "Ray Train wrote nothing at the file:// storage_path"

        # Where things ran: every actor of the run is still listed (DEAD) with the node it lived on.
        # (An actor that was never placed has no node id; it ran nowhere.)
        actors = [a for a in cluster.state("actors") if a.get("node_id")]
        train_nodes = {a["node_id"] for a in actors if "RayTrainWorker" in a["class_name"]}
        probe_nodes = {a["node_id"] for a in actors if "ProbeActor" in a["class_name"]}
        summary = sorted({(a["class_name"], a["node_id"][:8]) for a in actors})
        assert train_nodes == node_ids, f"training workers ran on {train_nodes}, nodes are {node_ids}: {summary}"
        assert probe_nodes == node_ids, f"probe actors ran on {probe_nodes}, nodes are {node_ids}: {summary}"
        assert head_id in train_nodes and len(node_ids - {head_id}) == 1
    finally:
        cluster.stop()
    assert not any(session_pids(sid) for sid in cluster.sessions), "processes of the test cluster outlived it"
