"""``ltuning serve`` throughput: dynamic batching (--max-batch 64) against one request at a time (--max-batch 1),
side by side in one run on the packaged minilm.

    python benchmarks/serve_bench.py                       # 3 rounds x 200 one-text requests, 32 clients
    python benchmarks/serve_bench.py --rounds 5 --requests 400 --clients 64

Both servers run as ``ltuning serve`` subprocesses at once (an idle server takes no CPU) with the same
untrained LT-prefix adapter on minilm (throughput does not depend on the weights); the rounds alternate
batched / single so that a change in the machine's load hits both. A round: ``--clients`` threads send
``--requests`` POST /predict requests of one packaged demo validation text each (urllib, keep-alive off),
as fast as answers come back. Writes benchmarks/results/serve.json (config, per-round numbers, medians,
the ratio, versions, git commit, load average before and after).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

OUT = common.RESULTS / "serve.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: dict) -> float:
    t0 = time.perf_counter()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        r.read()
    return time.perf_counter() - t0


def start_server(adapter: Path, max_batch: int, max_wait_ms: float, threads: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(common.ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "ltuning", "serve", "--adapter", str(adapter), "--port", str(port),
                             "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--log-level",
                             "warning"], env=env)
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return proc, port
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("server did not start") from None
            time.sleep(0.5)


def one_round(port: int, texts: list[str], clients: int) -> dict:
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(lambda t: post(port, {"texts": [t]}), texts))
    seconds = time.perf_counter() - t0
    latencies.sort()
    return {"seconds": seconds, "requests_per_s": len(texts) / seconds,
            "latency_p50_ms": 1000 * latencies[len(latencies) // 2],
            "latency_p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=200, help="requests per round (one text each)")
    ap.add_argument("--clients", type=int, default=32, help="concurrent client threads")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads per server (OMP_NUM_THREADS)")
    ap.add_argument("--method", default="lt-prefix")
    ap.add_argument("--output", type=Path, default=OUT)
    args = ap.parse_args()

    from ltuning.data import read_demo
    from ltuning.loading import load_backbone
    from ltuning.model import LTuningModel

    load_start = common.machine()
    data = read_demo("validation")
    texts = list(data.texts[:args.requests])
    with tempfile.TemporaryDirectory() as tmp:
        from ltuning.config import LTuningConfig

        model = LTuningModel(load_backbone("minilm"), LTuningConfig(method=args.method, base_model="minilm",
                                                                    label_names=["negative", "positive"],
                                                                    **common.label_map(args.method)))  # as stored
        adapter = model.save_pretrained(Path(tmp) / "adapter")
        del model
        servers = {"batched": start_server(adapter, args.max_batch, args.max_wait_ms, args.threads),
                   "single": start_server(adapter, 1, 0.0, args.threads)}
        rounds = {name: [] for name in servers}
        try:
            for _, port in servers.values():  # warm-up: first requests load lazy kernels
                one_round(port, texts[:20], args.clients)
            for r in range(args.rounds):
                for name, (_, port) in servers.items():
                    result = one_round(port, texts, args.clients)
                    rounds[name].append(result)
                    print(f"round {r} {name}: {result['requests_per_s']:.1f} requests/s "
                          f"(p50 {result['latency_p50_ms']:.0f} ms, p95 {result['latency_p95_ms']:.0f} ms)", flush=True)
            health = {}
            for name, (_, port) in servers.items():
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as h:
                    health[name] = json.loads(h.read())
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)
    median = {name: statistics.median(x["requests_per_s"] for x in rs) for name, rs in rounds.items()}
    payload = {
        "benchmark": "serve: dynamic batching vs one request at a time",
        "config": {"backbone": "minilm", "method": args.method, "adapter": "untrained (throughput only)",
                   "labels": 2, "texts": "packaged demo validation, first N", "requests_per_round": len(texts),
                   "texts_per_request": 1, "clients": args.clients, "rounds": args.rounds,
                   "batched": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms},
                   "single": {"max_batch": 1, "max_wait_ms": 0}, "torch_threads_per_server": args.threads,
                   "order": "rounds alternate batched / single"},
        "rounds": rounds,
        "median_requests_per_s": median,
        "speedup_batched_over_single": median["batched"] / median["single"],
        "server_stats": health,
        "versions": common.versions("torch", "transformers", "fastapi", "uvicorn"),
        "git": common.git_commit(),
        "machine": {**load_start, "loadavg_at_end": os.getloadavg()},
        "date": common.now(),
    }
    common.write_result(args.output, payload)
    print(f"batched {median['batched']:.1f} vs single {median['single']:.1f} requests/s: "
          f"x{payload['speedup_batched_over_single']:.2f}; written to {args.output}")


if __name__ == "__main__":
    main()
