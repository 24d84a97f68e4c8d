"""Dynamic batching under load: ``mobilenets serve`` with ``--max-batch N`` against ``--max-batch 1``.

    .venv/bin/python benchmarks/serve_load.py --concurrency 16 --requests 2000 --threads 2
    .venv/bin/python benchmarks/serve_load.py --checkpoint runs/fmnist/best.pt --backend ort --image shirt.png

Without ``--checkpoint`` the model is MobileNet V1 1.0 at 224 px (random weights, 1000 classes),
exported to ONNX (or ONNX int8 with ``--int8``, calibrated on random images: the speed is what
counts here) in a temporary folder. One server per ``--max-batch`` value (default: 16 and 1) is
started on a free loopback port and warmed up; then the servers take turns, ``--rounds`` times
(the order reversed every other round), each turn ``--requests / --rounds`` POST /predict
requests from ``--concurrency`` clients (asyncio + aiohttp, keep-alive connections), each
sending its next request when the last is answered. Taking turns puts the servers side by side
in time, so that a shared machine's slow minutes fall on both. The load is bounded in count
and in time (``--timeout``), goes to 127.0.0.1 only, and stops by itself. Printed per server:
throughput (median of its rounds, and the range), latency p50 / p90 / p99 over all its
requests, failed requests (any status but 200, or no answer), the mean batch size from
/metrics; then the throughput ratio of the first server to the last, round by round and its
median. The clients share the machine's cores with the server: quote the numbers with the
machine and the command. The script asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_jpeg(size: int = 224, seed: int = 0) -> bytes:
    """A photo-like test image: smooth colour gradients plus noise, as JPEG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x, y, (x + y) / 2], axis=-1) * 200 + rng.normal(0, 20, (size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def export_v1(folder: Path, int8: bool) -> Path:
    """MobileNet V1 1.0 at 224 px as ONNX (fp32, or int8 calibrated on random inputs)."""
    import torch

    from mobilenets import create_model
    from mobilenets.export import export_model
    from mobilenets.preprocess import Preprocess

    model = create_model("mobilenet_v1").eval()
    calibration = [torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    out = folder / ("v1-int8.onnx" if int8 else "v1.onnx")
    export_model(model, out, "onnx", preprocess=Preprocess.imagenet(224), class_names=[str(i) for i in range(1000)],
                 calibration=calibration if int8 else None, log=lambda _: None)
    return out


class ServerProcess:
    """``mobilenets serve --port 0 ...`` as a child process; ``url`` from the line it prints."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "mobilenets", "serve", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in self.proc.stdout:
            if match := re.search(r"listening on (http://\S+)", line):
                self.url = match.group(1)
                return
        raise RuntimeError(f"the server did not start (exit status {self.proc.wait()})")

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(60)


async def load(url: str, body: bytes, content_type: str, concurrency: int, requests: int, timeout: float) -> dict:
    """``requests`` POST /predict from ``concurrency`` clients: the seconds taken, the answered
    requests' latencies, the failures, and the batches and images /metrics counted meanwhile.

    aiohttp, not httpx: on this 2-core machine httpx's async client tops out near 250 requests/s
    against /healthz, aiohttp near 4,000, so only aiohttp leaves the cores to the server.
    """
    import aiohttp

    latencies: list[float] = []
    failures = 0
    remaining = requests
    headers = {"Content-Type": content_type}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:

        async def get_metrics() -> str:
            async with client.get("/metrics") as response:
                return await response.text()

        async def worker() -> None:
            nonlocal remaining, failures
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                try:
                    async with client.post("/predict", data=body, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1

        before = await get_metrics()
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout)
        seconds = time.perf_counter() - started
        after = await get_metrics()
    batches = _metric(after, "mobilenets_batch_size_count") - _metric(before, "mobilenets_batch_size_count")
    images = _metric(after, "mobilenets_batch_size_sum") - _metric(before, "mobilenets_batch_size_sum")
    return {"seconds": seconds, "latencies": latencies, "failed": failures, "batches": batches, "images": images}


def rate(run: dict) -> float:
    """Answered requests per second of one load run."""
    return len(run["latencies"]) / run["seconds"]


def summary(rounds: list[dict]) -> dict:
    """One server's rounds: median throughput (and range), pooled latency percentiles, totals."""
    rates = [rate(r) for r in rounds]
    ms = np.array([t for r in rounds for t in r["latencies"]]) * 1000
    batches, images = sum(r["batches"] for r in rounds), sum(r["images"] for r in rounds)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(ms, q)), 2) if len(ms) else None

    return {
        "requests": len(ms) + sum(r["failed"] for r in rounds),
        "failed": sum(r["failed"] for r in rounds),
        "throughput_rps": round(float(np.median(rates)), 1),
        "throughput_range": [round(min(rates), 1), round(max(rates), 1)],
        "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
        "mean_batch": round(images / batches, 2) if batches else None,
    }


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="what to serve (default: MobileNet V1 1.0 at 224 px, exported to ONNX)")
    p.add_argument("--int8", action="store_true", help="the default model as ONNX int8")
    p.add_argument("--backend", help="--backend for a training checkpoint (eager, ort, openvino)")
    p.add_argument("--image", help="image file to send (default: a synthetic 224x224 JPEG)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=2000, help="measured requests per server, over all rounds")
    p.add_argument("--rounds", type=int, default=5, help="turns each server takes (default 5)")
    p.add_argument("--warmup", type=int, default=100, help="requests sent before the measured ones")
    p.add_argument("--max-batch", type=int, nargs="+", default=[16, 1], help="servers to compare (default 16 1)")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="server inference threads")
    p.add_argument("--timeout", type=float, default=900, help="longest one load run may take, in seconds")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args()

    if args.rounds < 1 or args.requests < args.rounds:
        p.error("--rounds must be at least 1 and at most --requests")
    body = Path(args.image).read_bytes() if args.image else synthetic_jpeg()
    content_type = "image/png" if body[:4] == b"\x89PNG" else "image/jpeg"

    def run_load(server: ServerProcess, requests: int) -> dict:
        return asyncio.run(load(server.url, body, content_type, args.concurrency, requests, args.timeout))

    rounds: dict[int, list[dict]] = {max_batch: [] for max_batch in args.max_batch}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        checkpoint = args.checkpoint or str(export_v1(Path(tmp), args.int8))
        servers = {}
        for max_batch in args.max_batch:
            server_args = ["--checkpoint", checkpoint, "--threads", str(args.threads), "--max-batch", str(max_batch),
                           "--max-wait-ms", str(args.max_wait_ms), "--max-queue", str(max(256, args.concurrency))]
            if args.backend:
                server_args += ["--backend", args.backend]
            servers[max_batch] = stack.enter_context(ServerProcess(server_args))
            run_load(servers[max_batch], args.warmup)
        for i in range(args.rounds):
            order = args.max_batch if i % 2 == 0 else args.max_batch[::-1]
            for max_batch in order:
                rounds[max_batch].append(run_load(servers[max_batch], args.requests // args.rounds))
            print(f"round {i + 1}: " + ", ".join(f"--max-batch {m} {rate(r[-1]):.1f} req/s" for m, r in rounds.items()),
                  file=sys.stderr, flush=True)
    results = {max_batch: summary(r) for max_batch, r in rounds.items()}
    first, last = args.max_batch[0], args.max_batch[-1]
    ratios = [rate(a) / rate(b) for a, b in zip(rounds[first], rounds[last])] if len(rounds) > 1 else []
    ratio = float(np.median(ratios)) if ratios else None
    if args.json:
        print(json.dumps({"model": args.checkpoint or ("v1-224-int8" if args.int8 else "v1-224-fp32"),
                          "concurrency": args.concurrency, "max_wait_ms": args.max_wait_ms, "threads": args.threads,
                          "rounds": args.rounds, "results": results, "ratios": [round(r, 3) for r in ratios],
                          "ratio": ratio}, indent=2))
        return 0
    print(f"{'max batch':>9} {'req/s':>8} {'range':>13} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'failed':>7} "
          f"{'mean batch':>10}")
    for max_batch, r in results.items():
        low, high = r["throughput_range"]
        print(f"{max_batch:>9} {r['throughput_rps']:>8} {f'{low}-{high}':>13} {r['p50_ms']:>8} {r['p90_ms']:>8} "
              f"{r['p99_ms']:>8} {r['failed']:>7} {r['mean_batch']:>10}")
    if ratio is not None:
        print(f"throughput, --max-batch {first} / --max-batch {last}, round by round: "
              f"{', '.join(f'{r:.2f}x' for r in ratios)}; median {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
