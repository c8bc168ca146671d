"""Ending exactly the processes a test started (never a global `ray stop`, which would end other people's Ray too).

Tests start `ray start`, `ray job submit` or `toolace-r run` with `start_new_session=True`; everything those spawn —
GCS, raylet, dashboard, agents, Ray workers (which leave the process group but not the session) — stays in that
session, so ending the session ends exactly what the test started.
"""
from __future__ import annotations

import os
import signal
import time


def session_pids(sid: int) -> list[int]:
    """Pids of every live process in session `sid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def end_session(sid: int, term_grace_s: float = 5.0, kill_grace_s: float = 3.0) -> None:
    """SIGTERM every process of session `sid`, wait up to `term_grace_s`, then SIGKILL what is left
    (`term_grace_s=0`: SIGKILL straight away)."""
    steps = ((signal.SIGTERM, term_grace_s),) if term_grace_s > 0 else ()
    for sig, grace in steps + ((signal.SIGKILL, kill_grace_s),):
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and session_pids(sid):
            time.sleep(0.2)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_node_ports() -> list[str]:
    """`ray start` flags giving a node its own free port for every listener that otherwise takes a fixed default.

    A second Ray on the same machine — the test session's own `ray.init()`, another node of a test cluster — already
    holds the defaults (dashboard agent 52365, ...). A node whose agent cannot bind its port never registers a job
    agent, and every `ray job submit` to it fails with 'No available agent to submit job'."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]
