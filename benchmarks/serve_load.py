"""Load test of the served classifier: HTTP throughput and latency vs the in-process model.

Starts ``bentoml serve serving.service:Sightline`` on a free loopback port (or drives ``--url``),
waits for ``/readyz``, then for each concurrency level keeps that many requests in flight for
``--seconds``, each request one Fashion-MNIST test image as a PNG upload to
``/classifier/predict``. Prints requests/s, p50/p99 latency, errors and the server's memory
(RSS of its process tree) at start and end, and the ratio of served throughput to the in-process
throughput of the same work (PNG decode, preprocessing, batched forward at the service's
``max_batch_size``, top-k) measured in this run on this machine.

Run after ``dvc repro package``: ``python benchmarks/serve_load.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def test_pngs(n: int) -> list[bytes]:
    """``n`` Fashion-MNIST test images as PNG bytes (the prepared split)."""
    import numpy as np
    from PIL import Image

    x = np.load(ROOT / "data/prepared/fashion_mnist/test_x.npy", mmap_mode="r")[:n]
    out = []
    for a in x:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(a[0])).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def in_process_rate(pngs: list[bytes], batch: int, seconds: float) -> float:
    """Images/s of decode + preprocess + batched forward + top-k, in this process."""
    import bentoml
    import torch
    from PIL import Image

    from serving.service import CONFIG
    from sightline.inference import load_module

    m = load_module(bentoml.models.get("classifier:latest").path, "classifier", "cpu")
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = [pngs[(done + i) % len(pngs)] for i in range(batch)]
        with torch.inference_mode():
            imgs = [Image.open(io.BytesIO(b)) for b in chunk]
            m.postprocess(m(m.preprocess(imgs)), top_k=CONFIG.top_k)
        done += batch
    return done / (time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


async def drive(url: str, pngs: list[bytes], concurrency: int, seconds: float) -> dict:
    import aiohttp

    latencies, errors, sent = [], {}, 0
    deadline = time.perf_counter() + seconds

    async def worker(session, k: int) -> None:
        nonlocal errors, sent
        i = k
        while time.perf_counter() < deadline:
            form = aiohttp.FormData()
            form.add_field("images", pngs[i % len(pngs)], filename="x.png", content_type="image/png")  # fmt: skip
            t0 = time.perf_counter()
            try:
                async with session.post(f"{url}/classifier/predict", data=form) as resp:
                    await resp.read()
                    status = str(resp.status)
            except aiohttp.ClientError as err:
                status = type(err).__name__
            latencies.append(time.perf_counter() - t0)
            if status != "200":
                errors[status] = errors.get(status, 0) + 1
            sent += 1
            i += concurrency

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session, k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {"rps": sent / elapsed, "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3, "errors": errors, "requests": sent}  # fmt: skip


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 180) -> None:
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running service (default: start one on a free port)")
    p.add_argument("--seconds", type=float, default=15.0, help="per concurrency level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--images", type=int, default=512, help="distinct test images cycled through")
    args = p.parse_args()

    from serving.service import CONFIG

    pngs = test_pngs(args.images)
    proc, url = None, args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:Sightline", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        wait_ready(url, proc)
        pid = proc.pid if proc is not None else None
        mem_start = rss_mb(pid) if pid else float("nan")
        asyncio.run(drive(url, pngs, 4, 3.0))  # warm-up, not reported
        rows = [(c, asyncio.run(drive(url, pngs, c, args.seconds))) for c in args.concurrency]
        mem_end = rss_mb(pid) if pid else float("nan")
    finally:
        if proc is not None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
    batch = CONFIG.batch("classifier")["max_batch_size"]
    local = in_process_rate(pngs, batch, args.seconds)

    print(f"classifier service, {args.seconds:.0f} s per level, 1 PNG per request, {os.cpu_count()} CPUs, workers={CONFIG.workers}, max_batch_size={batch}, max_latency_ms={CONFIG.batch('classifier')['max_latency_ms']}")  # fmt: skip
    print(f"in-process (decode + preprocess + batch {batch} forward + top-k): {local:.0f} images/s")
    print(f"server RSS: {mem_start:.0f} MiB at start, {mem_end:.0f} MiB at end")
    print("| concurrency | requests | req/s | p50 ms | p99 ms | errors | served / in-process |")
    print("|---|---|---|---|---|---|---|")
    for c, r in rows:
        print(f"| {c} | {r['requests']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {sum(r['errors'].values())}{' ' + str(r['errors']) if r['errors'] else ''} | {r['rps'] / local:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
