"""Load test of the served classifier against two references measured in the same run.

Starts ``bentoml serve serving.service:Sightline`` (the front and one service per model) and,
beside it, the HTTP floor (``benchmarks/floor.py``: the same server answering the same multipart
upload with a constant, no decoding, no model), each on a free loopback port; or drives
``--url``. The load comes from ``--clients`` processes, each keeping its share of the requests in
flight, so one client process is not the bottleneck. For 1 and 16 images per request at each
concurrency it prints images/s, p50/p99 latency and errors, and two ratios:

- served / in-process: the same work (decoding where the service decodes, preprocessing, batched
  forward, top-k) in this process on the same device, at the same batch size as the request;
- served / floor: requests/s of the service over requests/s of the floor at the same load.

``--isolation`` also measures the classifier's p99 alone and while ``/spam/predict`` is kept
busy with image mail (OCR), and ``--bad-fraction`` mixes client mistakes into the load. The
RSS of every server process is printed with the service it runs.

Run after ``dvc repro package``: ``python benchmarks/serve_load.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import process_rss, rss_mb, serving  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def test_images(n: int, fmt: str = "png") -> list[bytes]:
    """``n`` Fashion-MNIST test images as PNG (or JPEG, quality 90) bytes (the prepared split;
    random 28x28 images when it has not been prepared)."""
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
        Image.fromarray(np.asarray(a[0])).save(buf, format=fmt.upper(), quality=90)
        out.append(buf.getvalue())
    return out


def settings():
    """The serving settings a server started now runs with (``SIGHTLINE_SERVING_PARAMS`` or
    serving/params.yaml), as a new process reads them: ``serving.inputs.CONFIG`` is read once,
    so this process's may be older than the environment."""
    from serving.settings import ServingConfig

    code = "from serving.inputs import CONFIG; print(CONFIG.model_dump_json())"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"error: the serving settings: {done.stderr.strip().splitlines()[-1]}")
    return ServingConfig.model_validate_json(done.stdout.strip().splitlines()[-1])


def in_process_rate(images: list[bytes], batch: int, seconds: float, config) -> float:
    """Images/s of decode + preprocess + batched forward + top-k, in this process, on the device
    the service would choose, decoding where the service would (JPEGs on the device when
    ``services.classifier.decode`` of ``config`` says so, else with PIL)."""
    import bentoml
    import torch
    from PIL import Image

    from serving.decoding import pixels
    from serving.inputs import Jpeg, jpeg_bytes
    from sightline.inference import load_module, select_device

    device = select_device()
    m = load_module(bentoml.models.get("classifier:latest").path, "classifier", device)
    on_device = config.service("classifier").decodes_jpeg

    def item(data: bytes):
        img = Image.open(io.BytesIO(data))
        return Jpeg(data) if on_device and jpeg_bytes(img) else img

    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = [images[(done + i) % len(images)] for i in range(batch)]
        with torch.inference_mode():
            x = pixels(m, [item(b) for b in chunk], device)
            m.postprocess(m(x).float().cpu(), top_k=config.top_k)
        done += batch
    return done / (time.perf_counter() - start)


def bad_requests() -> list[tuple[str, bytes, str]]:
    """Client mistakes the service must answer with 4xx: ``(route, body, content type)``."""
    from PIL import Image

    big = io.BytesIO()
    Image.new("L", (4097, 4097)).save(big, format="PNG", optimize=True)
    part = b'--B\r\nContent-Disposition: form-data; name="images"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n%s\r\n--B--\r\n'
    return [
        ("/classifier/predict", b"", "multipart/form-data"),  # no boundary
        ("/classifier/predict", part % b"not an image", "multipart/form-data; boundary=B"),
        ("/classifier/predict", part % big.getvalue(), "multipart/form-data; boundary=B"),  # pixels
        (
            "/classifier/predict",
            b'--B\r\nContent-Disposition: form-data; name="images"\r\n\r\nhttp://127.0.0.1/x.png\r\n--B--\r\n',
            "multipart/form-data; boundary=B",
        ),
        ("/clip/embed_texts", json.dumps({"texts": ["x" * 5000]}).encode(), "application/json"),
        ("/gan/sample", b'{"n": 0}', "application/json"),
        ("/spam/predict", b"{not json", "application/json"),
    ]


def multipart(images: list[bytes], fmt: str = "png") -> tuple[bytes, str]:
    out = io.BytesIO()
    for i, data in enumerate(images):
        out.write(
            b'--B\r\nContent-Disposition: form-data; name="images"; filename="%d.%s"\r\nContent-Type: image/%s\r\n\r\n'
            % (i, fmt.encode(), fmt.encode())
        )
        out.write(data + b"\r\n")
    out.write(b"--B--\r\n")
    return out.getvalue(), "multipart/form-data; boundary=B"


def client(
    url: str,
    bodies: list[tuple[str, bytes, str, bool]],
    concurrency: int,
    seconds: float,
    start_at: float,
) -> dict:
    """One load-generator process: ``concurrency`` requests in flight from ``start_at`` for
    ``seconds``, cycling through ``bodies`` (``(route, body, content type, is a mistake)``)."""
    import aiohttp

    async def run() -> dict:
        latencies, statuses, sent = [], {}, 0
        await asyncio.sleep(max(0.0, start_at - time.time()))
        deadline = time.perf_counter() + seconds

        async def worker(session, k: int) -> None:
            nonlocal sent
            i = k
            while time.perf_counter() < deadline:
                route, body, ctype, bad = bodies[i % len(bodies)]
                t0 = time.perf_counter()
                try:
                    async with session.post(
                        url + route, data=body, headers={"Content-Type": ctype}
                    ) as resp:
                        text = await resp.read()
                        status = str(resp.status)
                        if resp.status >= 500:  # why, in a few words
                            status += " " + text[:60].decode("utf-8", "replace")
                except aiohttp.ClientError as err:
                    status = type(err).__name__
                key = ("bad" if bad else "good", status)
                statuses[key] = statuses.get(key, 0) + 1
                if not bad:
                    latencies.append(time.perf_counter() - t0)
                sent += 1
                i += concurrency

        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency)
        ) as session:
            await asyncio.gather(*(worker(session, k) for k in range(concurrency)))
        return {"latencies": latencies, "statuses": statuses}

    return asyncio.run(run())


def load(pool, url: str, bodies, concurrency: int, seconds: float, clients: int) -> dict:
    """Spread ``concurrency`` over ``clients`` processes; merge their latencies and statuses."""
    shares = [concurrency // clients + (i < concurrency % clients) for i in range(clients)]
    start_at = time.time() + 0.5
    futures = [
        pool.submit(client, url, bodies[i:] + bodies[:i], c, seconds, start_at)
        for i, c in enumerate(shares)
        if c
    ]
    latencies, statuses = [], {}
    for f in futures:
        r = f.result()
        latencies += r["latencies"]
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    errors = {
        f"{kind}:{s}": n
        for (kind, s), n in statuses.items()
        if (kind == "good" and s != "200") or (kind == "bad" and not s.startswith("4"))
    }
    return {
        "rps": len(latencies) / seconds,
        "p50_ms": q[49] * 1e3,
        "p99_ms": q[98] * 1e3,
        "errors": errors,
        "requests": sum(statuses.values()),
    }


def spam_mail() -> list[tuple[str, bytes, str, bool]]:
    """``/spam/predict`` bodies with a picture of words, which the server reads with OCR."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (480, 80), "white")
    ImageDraw.Draw(im).text(
        (10, 30), "Double your money with this exclusive offer now", fill="black"
    )
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    msg = {
        "subject": "offer",
        "body": "see the picture",
        "images": [base64.b64encode(buf.getvalue()).decode()],
    }
    return [("/spam/predict", json.dumps({"messages": [msg]}).encode(), "application/json", False)]


def main(argv: list[str] | None = None) -> list[tuple[int, int, dict]]:
    """Run the benchmark, print its table; the served rows ``(images/request, concurrency,
    result)``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running service (default: start one on a free port)")
    p.add_argument("--seconds", type=float, default=15.0, help="per level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 64])
    p.add_argument("--per-request", type=int, nargs="+", default=[1, 16], help="images per request")
    p.add_argument(
        "--clients",
        type=int,
        default=max(2, (os.cpu_count() or 2) // 4),
        help="load-generator processes (default: a quarter of the cores, at least 2)",
    )
    p.add_argument("--images", type=int, default=512, help="distinct test images cycled through")
    p.add_argument("--format", choices=["png", "jpeg"], default="png", help="of the uploads")
    p.add_argument(
        "--bad-fraction",
        type=float,
        default=0.0,
        help="share of requests that are client mistakes (expected 4xx), e.g. 0.1",
    )
    p.add_argument("--server-log", help="write the service's output to this file")
    p.add_argument(
        "--isolation", action="store_true", help="classifier p99 alone and while spam OCR runs"
    )
    args = p.parse_args(argv)

    config = settings()
    images = test_images(args.images, args.format)
    every = round(1 / args.bad_fraction) if args.bad_fraction else 0
    bad = [(r, b, c, True) for r, b, c in bad_requests()]

    def bodies(k: int) -> list[tuple[str, bytes, str, bool]]:
        good = [
            ("/classifier/predict", *multipart(images[i : i + k], args.format), False)
            for i in range(0, len(images) - k + 1, k)
        ]
        if not every:
            return good
        return [
            bad[(i // every) % len(bad)] if i % every == 0 else g for i, g in enumerate(good * 2)
        ]

    rows, floor_rows, isolation, memory = [], {}, None, []
    with ProcessPoolExecutor(args.clients + 1) as pool:  # one more for the spam load of --isolation
        with serving("serving.service:Sightline", args.url, args.server_log) as (url, pid):
            load(pool, url, bodies(1), 4, 3.0, args.clients)  # warm-up, not reported
            mem_start = rss_mb(pid) if pid else float("nan")
            for k in args.per_request:
                for c in args.concurrency:
                    rows.append((k, c, load(pool, url, bodies(k), c, args.seconds, args.clients)))
            if args.isolation:  # after the queue of the last level has drained
                time.sleep(3.0)
                load(pool, url, bodies(1), 8, 3.0, args.clients)
                alone = load(pool, url, bodies(1), 8, args.seconds, args.clients)
                busy = pool.submit(client, url, spam_mail(), 8, args.seconds + 2, time.time())
                during = load(pool, url, bodies(1), 8, args.seconds, args.clients)
                spam = busy.result()
                isolation = (alone, during, sum(spam["statuses"].values()))
            mem_end = rss_mb(pid) if pid else float("nan")
            memory = process_rss(pid) if pid else []
        if args.url is None:
            with serving("benchmarks.floor:Floor") as (url, _):
                load(pool, url, bodies(1), 4, 3.0, args.clients)
                for k in args.per_request:
                    for c in args.concurrency:
                        floor_rows[k, c] = load(pool, url, bodies(k), c, args.seconds, args.clients)
    local = {
        k: in_process_rate(images, k, min(args.seconds, 10.0), config) for k in args.per_request
    }

    import torch

    from sightline.inference import select_device

    batch, classifier = config.batch("classifier"), config.service("classifier")
    print(
        f"classifier, {args.seconds:.0f} s per level, {args.clients} load-generator processes, {os.cpu_count()} CPUs, device {select_device()}{' (' + torch.cuda.get_device_name() + ')' if torch.cuda.is_available() else ''}, gpu: {config.gpu}, front workers={config.workers}, calls in flight={config.calls_in_flight}, classifier workers={classifier.workers}, max_batch_size={batch['max_batch_size']}, {args.format.upper()} uploads, JPEGs decoded {'on the device' if classifier.decodes_jpeg else 'by the front'}"
    )
    for k, rate in local.items():
        print(f"in-process (decode + preprocess + batch {k} forward + top-k): {rate:.0f} images/s")
    if args.bad_fraction:
        print(
            f"{args.bad_fraction:.0%} of requests are client mistakes ({len(bad)} kinds); errors count any 5xx or 503, and any mistake not answered 4xx"
        )
    print(
        f"server RSS: {mem_start:.0f} MiB after warm-up, {mem_end:.0f} MiB at the end ({mem_end / mem_start:.3f}x)"
    )
    print(
        "| images/request | concurrency | req/s | images/s | p50 ms | p99 ms | errors | served / in-process | floor req/s | served / floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, c, r in rows:
        f = floor_rows.get((k, c))
        floor = f"{f['rps']:.1f} | {r['rps'] / f['rps']:.3f}" if f else "— | —"
        print(
            f"| {k} | {c} | {r['rps']:.1f} | {r['rps'] * k:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {sum(r['errors'].values())}{' ' + str(r['errors']) if r['errors'] else ''} | {r['rps'] * k / local[k]:.3f} | {floor} |"
        )
    if isolation:
        alone, during, spam_sent = isolation
        print(
            f"isolation (concurrency 8, 1 image): classifier p99 {alone['p99_ms']:.1f} ms alone, {during['p99_ms']:.1f} ms while {spam_sent} spam image-mail requests ran ({during['p99_ms'] / alone['p99_ms']:.2f}x)"
        )
    if memory:
        print("RSS per process (MiB): " + ", ".join(f"{name} {mb:.0f}" for name, mb in memory))
    return rows


if __name__ == "__main__":
    main()
