"""`toolace-r serve` as a user runs it (toolace_r.serve.cli; issue 20, item 4): Ctrl-C in the terminal stops the
server, Serve and the Ray the command started, within 5 s.

A second test talks to the command as an agent framework would (issue 20, "Done when"): LangChain's
`ChatOpenAI(...).bind_tools(...)`, `.invoke` and `.stream`, whose streamed tool-call chunks must add up to the same
calls as the non-streamed answer (one call, and two calls in one answer).

The Ctrl-C test starts the command with SIGINT ignored, as a child of a process that ignores it inherits it (inside
the full suite the pytest process did, and the command, relying on Python's default handler, then ignored Ctrl-C):
the command installs its own handler, so Ctrl-C stops it either way.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group, so Ray's own processes started by the command
get it too; the test does the same (os.killpg on the command's group). The command runs in its own session with
RAY_ADDRESS=local, so it always starts its own Ray (never joins the test session's) and the test can check that
nothing of it is left afterwards. Slow: about 40 s, most of it Ray and the replica starting.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from processes import end_session, free_port, session_pids
from serve_model import OPENAI_TOOLS
from toolace_r.serve.cli import STOP_WITHIN_S

REPO = Path(__file__).resolve().parents[2]


def _wait_until_healthy(base: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"toolace-r serve exited (rc {proc.returncode}) before serving:\n{log.read_text()}")
        try:
            if requests.get(f"{base}/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"toolace-r serve was not healthy within {timeout_s} s:\n{log.read_text()[-3000:]}")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _langchain_stream_equals_invoke(base: str) -> None:
    """ChatOpenAI(...).bind_tools(tools): the calls LangChain adds up from `.stream()` chunks equal `.invoke()`'s."""
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="toolace-r", base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120,
                     temperature=0).bind_tools(OPENAI_TOOLS)
    for question, cities in (("What is the weather in Paris?", ["Paris"]),
                             ("Weather in Oslo and Rome?", ["Oslo", "Rome"])):
        invoked = [(c["name"], c["args"]) for c in llm.invoke(question).tool_calls]
        assert invoked == [("get_weather", {"city": city}) for city in cities], invoked
        chunks = list(llm.stream(question))
        total = chunks[0]
        for chunk in chunks[1:]:
            total = total + chunk
        assert len(chunks) > 3 and [(c["name"], c["args"]) for c in total.tool_calls] == invoked, total
        assert total.response_metadata.get("finish_reason") == "tool_calls"


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start_serve(model_dir: Path, tmp_path: Path, sigint_ignored: bool = False) -> tuple[subprocess.Popen, int, Path]:
    """`toolace-r serve` in its own session with its own Ray; (process, port, log file). `sigint_ignored`: started
    with SIGINT ignored, as under a parent that ignores it."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_ADDRESS="local", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "toolace_r.cli", "serve", "--model", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), "serve.num_cpus=0.25", "serve.min_replicas=1", "serve.max_replicas=1"]
    log = tmp_path / "serve.log"
    with open(log, "w") as out:  # a file, not a pipe: Ray's daemons may hold on to a pipe
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_ignore_sigint if sigint_ignored else None)
    return proc, port, log


@pytest.mark.slow
def test_langchain_through_the_serve_command(model_dir, tmp_path):
    proc, port, log = _start_serve(model_dir, tmp_path)
    try:
        _wait_until_healthy(f"http://127.0.0.1:{port}", proc, log, timeout_s=240)
        _langchain_stream_equals_invoke(f"http://127.0.0.1:{port}")
    finally:
        end_session(proc.pid)


@pytest.mark.slow
def test_ctrl_c_stops_serve_and_the_ray_it_started_within_5_s(model_dir, tmp_path):
    proc, port, log = _start_serve(model_dir, tmp_path, sigint_ignored=True)
    try:
        _wait_until_healthy(f"http://127.0.0.1:{port}", proc, log, timeout_s=240)
        assert len(session_pids(proc.pid)) > 3  # the command, and the GCS, raylet, Serve actors of its own Ray

        start = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        try:
            rc = proc.wait(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"toolace-r serve still running {STOP_WITHIN_S} s after Ctrl-C:\n{log.read_text()[-3000:]}")
        took = time.monotonic() - start
        text = log.read_text()
        print(f"\nCtrl-C → exit in {took:.2f} s")
        assert rc == 0, text[-3000:]
        assert "shutting down Serve" in text and "stopping Ray" in text, text[-3000:]
        assert not _listening(port), "the HTTP proxy still listens after the command exited"
        # Ray's processes end with the command's ray.shutdown(); give the last workers a moment to exit
        deadline = time.monotonic() + 3
        while session_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = session_pids(proc.pid)
        assert not left, f"processes of the command's Ray still running: {left}"
    finally:
        end_session(proc.pid)
