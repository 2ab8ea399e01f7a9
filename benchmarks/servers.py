"""A served Bento for the benchmarks: ``bentoml serve`` on a free loopback port, its readiness
and the memory of its processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_rss(pid: int) -> list[tuple[str, float]]:
    """``(service, MiB)`` of every process of a server's tree (``watcher``: the supervisor)."""
    import psutil

    out = []
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            cmd = p.cmdline()
            name = (
                cmd[cmd.index("--service-name") + 1]
                if "--service-name" in cmd
                else ("watcher" if p.pid == pid else p.name())
            )
            out.append((name, p.memory_info().rss / 2**20))
        except (psutil.Error, IndexError):
            continue
    return out


def rss_mb(pid: int) -> float:
    return sum(mb for _, mb in process_rss(pid))


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 300) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"error: the server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"error: {url}/readyz not ready after {timeout:.0f} s")


@contextmanager
def serving(target: str, url: str | None = None, log: str | None = None):
    """``(url, pid)`` of ``bentoml serve target`` on a free loopback port (or of ``url``); its
    output goes to ``log`` when given."""
    if url is not None:
        yield url, None
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the server
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_ready(url, proc)
        yield url, proc.pid
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
        if log:
            out.close()
