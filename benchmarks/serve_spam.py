"""The served spam filter on image spam: latency, errors and what OCR read, per concurrency level.

Starts the packaged Bento (``bento/bento.json``, after ``dvc repro package``) on a free
loopback port, waits for ``/readyz``, then sends ``/spam/predict`` requests, each one
synthetic image-evasion message of the test split (subject, what is left of the body, its
rendered picture as base64): ``--requests`` one at a time, then twice as many with
``--concurrency`` in flight. Prints per level the status codes, p50 and max latency, how many
answers had words read in the picture (``modalities.image_text``) and how many labels were
right. OCR dominates the time: Tesseract reads each picture on the server.

``python benchmarks/serve_spam.py [--requests 16] [--concurrency 16]``
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serve_load import free_port, wait_ready  # the same server start as the classifier load test

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data/prepared/spam"


def post(url: str, row: dict) -> tuple[int, float, dict | None, int]:
    """(status, seconds, first answer or None, true label) of one ``/spam/predict`` request."""
    image = base64.b64encode((DATA / row["images"][0]).read_bytes()).decode()
    body = json.dumps(
        {"messages": [{"subject": row["subject"], "body": row["text"], "images": [image]}]}
    ).encode()
    req = urllib.request.Request(f"{url}/spam/predict", body, {"content-type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, time.perf_counter() - start, json.load(r)[0], row["label"]
    except urllib.error.HTTPError as err:
        return err.code, time.perf_counter() - start, None, row["label"]


def level(url: str, rows: list[dict], concurrency: int) -> str:
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda r: post(url, r), rows))
    wall = time.perf_counter() - start
    seconds = sorted(r[1] for r in results)
    codes = {c: sum(r[0] == c for r in results) for c in sorted({r[0] for r in results})}
    ok = [r for r in results if r[2] is not None]
    read = sum(r[2]["modalities"]["image_text"] for r in ok)
    right = sum((r[2]["label"] == "spam") == (r[3] == 1) for r in ok)
    return (
        f"| {concurrency} | {len(rows)} | {wall:.1f} | {codes} | {statistics.median(seconds):.2f} | "
        f"{seconds[-1]:.2f} | {read}/{len(ok)} | {right}/{len(ok)} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=16, help="requests sent one at a time")
    p.add_argument(
        "--concurrency", type=int, default=16, help="requests in flight at the second level"
    )
    args = p.parse_args()
    from sightline.mail.corpus import load_messages

    rows = load_messages(DATA, "test")
    rows = [r for r in rows if r["evasion"] and r["images"]][: 3 * args.requests]
    if len(rows) < 3 * args.requests:
        sys.exit(
            f"{DATA}: fewer than {3 * args.requests} evasion messages; run dvc repro prepare@spam"
        )
    bento = json.loads((ROOT / "bento/bento.json").read_text())["bento"]
    url = f"http://127.0.0.1:{free_port()}"
    bentoml = Path(sys.executable).with_name("bentoml")
    proc = subprocess.Popen(
        [str(bentoml), "serve", bento, "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(url, proc)
        print(f"spam service {bento}, one evasion message with its picture per request")
        print("| concurrency | requests | wall s | status | p50 s | max s | words read | right |")
        print("|---|---|---|---|---|---|---|---|")
        print(level(url, rows[: args.requests], 1))
        print(level(url, rows[args.requests :], args.concurrency))
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
