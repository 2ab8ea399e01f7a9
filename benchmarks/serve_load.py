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
    """``n`` Fashion-MNIST test images as PNG bytes (the prepared split; random 28x28 images
    when it has not been prepared)."""
    import numpy as np
    from PIL import Image

    prepared = ROOT / "data/prepared/fashion_mnist/test_x.npy"
    if prepared.is_file():
        x = np.load(prepared, mmap_mode="r")[:n]
    else:
        print(f"{prepared} missing: random 28x28 images instead", file=sys.stderr)
        x = np.random.default_rng(0).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
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


def bad_requests() -> list[tuple[str, bytes, str]]:
    """Client mistakes the service must answer with 4xx: ``(route, body, content type)``."""
    import json

    from PIL import Image

    big = io.BytesIO()
    Image.new("L", (4097, 4097)).save(big, format="PNG", optimize=True)
    part = b'--B\r\nContent-Disposition: form-data; name="images"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n%s\r\n--B--\r\n'  # fmt: skip
    return [
        ("/classifier/predict", b"", "multipart/form-data"),  # no boundary
        ("/classifier/predict", part % b"not an image", "multipart/form-data; boundary=B"),
        ("/classifier/predict", part % big.getvalue(), "multipart/form-data; boundary=B"),  # pixels
        (
            "/classifier/predict",
            b'--B\r\nContent-Disposition: form-data; name="images"\r\n\r\nhttp://127.0.0.1/x.png\r\n--B--\r\n',
            "multipart/form-data; boundary=B",
        ),  # fmt: skip
        ("/clip/embed_texts", json.dumps({"texts": ["x" * 5000]}).encode(), "application/json"),
        ("/gan/sample", b'{"n": 0}', "application/json"),
        ("/spam/predict", b"{not json", "application/json"),
    ]


async def drive(url: str, pngs: list[bytes], concurrency: int, seconds: float, bad_fraction: float = 0.0) -> dict:  # fmt: skip
    """Keep ``concurrency`` requests in flight for ``seconds``; every ``1/bad_fraction``-th is a
    client mistake (``bad_requests``), whose 4xx is expected and not counted as an error."""
    import aiohttp

    latencies, errors, sent, bad_sent = [], {}, 0, 0
    bad, every = bad_requests(), round(1 / bad_fraction) if bad_fraction else 0
    deadline = time.perf_counter() + seconds

    async def worker(session, k: int) -> None:
        nonlocal errors, sent, bad_sent
        i = k
        while time.perf_counter() < deadline:
            is_bad = every and i % every == 0
            if is_bad:
                route, data, ctype = bad[(i // every) % len(bad)]
                post = session.post(f"{url}{route}", data=data, headers={"Content-Type": ctype})
            else:
                form = aiohttp.FormData()
                form.add_field("images", pngs[i % len(pngs)], filename="x.png", content_type="image/png")  # fmt: skip
                post = session.post(f"{url}/classifier/predict", data=form)
            t0 = time.perf_counter()
            try:
                async with post as resp:
                    await resp.read()
                    status = str(resp.status)
            except aiohttp.ClientError as err:
                status = type(err).__name__
            if is_bad:
                bad_sent += 1
                if not status.startswith("4"):
                    errors[f"bad->{status}"] = errors.get(f"bad->{status}", 0) + 1
            else:
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
    return {"rps": len(latencies) / elapsed, "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3, "errors": errors, "requests": sent, "bad": bad_sent}  # fmt: skip


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
    p.add_argument("--bad-fraction", type=float, default=0.0, help="share of requests that are client mistakes (expected 4xx), e.g. 0.1")  # fmt: skip
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
        asyncio.run(drive(url, pngs, 4, 3.0, args.bad_fraction))  # warm-up, not reported
        mem_start = rss_mb(pid) if pid else float("nan")
        rows = [(c, asyncio.run(drive(url, pngs, c, args.seconds, args.bad_fraction))) for c in args.concurrency]  # fmt: skip
        mem_end = rss_mb(pid) if pid else float("nan")
    finally:
        if proc is not None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
    batch = CONFIG.batch("classifier")["max_batch_size"]
    local = in_process_rate(pngs, batch, args.seconds)

    print(f"classifier service, {args.seconds:.0f} s per level, 1 PNG per request, {os.cpu_count()} CPUs, workers={CONFIG.workers}, max_batch_size={batch}, max_latency_ms={CONFIG.batch('classifier')['max_latency_ms']}")  # fmt: skip
    print(f"in-process (decode + preprocess + batch {batch} forward + top-k): {local:.0f} images/s")
    print(f"server RSS: {mem_start:.0f} MiB after warm-up, {mem_end:.0f} MiB at end ({mem_end / mem_start:.3f}x)")  # fmt: skip
    if args.bad_fraction:
        print(f"{args.bad_fraction:.0%} of requests are client mistakes ({len(bad_requests())} kinds); errors count any 5xx or 503, and any bad request not answered 4xx")  # fmt: skip
    print("| concurrency | requests | of them bad | good req/s | p50 ms | p99 ms | errors | served / in-process |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for c, r in rows:
        print(f"| {c} | {r['requests']} | {r['bad']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {sum(r['errors'].values())}{' ' + str(r['errors']) if r['errors'] else ''} | {r['rps'] / local:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
