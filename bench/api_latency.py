"""Latency and throughput of `ftstudio api` on the embedded model, over real HTTP streaming.

    .venv/bin/python bench/api_latency.py [--model M] [--max-tokens 64] [--clients 1,4,16]

Starts the server in a subprocess (so client threads do not share its GIL), then for each client
count streams the same chat request from that many threads at once. Reports time to first token
(which for concurrent clients includes waiting in the queue: the server runs one generation at a
time), per-stream decode tokens/s, and aggregate tokens/s (all completion tokens / wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]


@dataclass
class StreamStats:
    ttft: float
    total: float
    tokens: int

    @property
    def decode_tps(self) -> float:
        span = self.total - self.ttft
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | None, port: int) -> subprocess.Popen:
    code = ("import sys; from app.serve.main import api_main; "
            f"sys.exit(api_main(model={model!r}, adapters=[], host='127.0.0.1', port={port}, api_key=''))")
    root = Path(__file__).resolve().parents[1]
    server = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=os.environ | {"FTSTUDIO_API_KEY": ""})
    deadline = time.time() + 300
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit("server did not start in 300 s")


def one_stream(url: str, model: str, max_tokens: int) -> StreamStats:
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft, tokens = None, 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=None) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content") and ttft is None:
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    total = time.perf_counter() - start
    return StreamStats(ttft if ttft is not None else total, total, tokens)


def direct_row(model: str | None, max_tokens: int) -> dict:
    """The same request on a ChatEngine in this process: the floor under the HTTP numbers."""
    from app.chat.engine import ChatEngine

    engine = ChatEngine(model)
    "".join(engine.stream(PROMPT, max_new_tokens=4))  # warm-up
    start = time.perf_counter()
    result = engine.stream(PROMPT, max_new_tokens=max_tokens)
    ttft = None
    for _ in result:
        ttft = ttft if ttft is not None else time.perf_counter() - start
    total = time.perf_counter() - start
    tokens = result.generation.completion_tokens if result.generation else 0
    stats = StreamStats(ttft or total, total, tokens)
    return {"clients": "engine", "ttft_p50_s": stats.ttft, "ttft_max_s": stats.ttft,
            "decode_tok_s": stats.decode_tps, "aggregate_tok_s": tokens / total, "tokens": tokens, "wall_s": total}


def run_level(url: str, model: str, clients: int, max_tokens: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        stats = list(pool.map(lambda _: one_stream(url, model, max_tokens), range(clients)))
    wall = time.perf_counter() - start
    ttfts = sorted(s.ttft for s in stats)
    return {
        "clients": clients,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_max_s": ttfts[-1],
        "decode_tok_s": statistics.median(s.decode_tps for s in stats),
        "aggregate_tok_s": sum(s.tokens for s in stats) / wall,
        "tokens": sum(s.tokens for s in stats),
        "wall_s": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="base model (default: the embedded SmolLM2-135M)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.add_argument("--no-direct", action="store_true", help="skip the in-process engine baseline row")
    args = parser.parse_args()
    baseline = [] if args.no_direct else [direct_row(args.model, args.max_tokens)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    server = start_server(args.model, port)
    try:
        load_s = time.perf_counter() - started
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        one_stream(url, model, 4)  # warm-up: first-call allocations
        rows = baseline + [run_level(url, model, int(n), args.max_tokens) for n in args.clients.split(",")]
    finally:
        server.terminate()
        server.wait(30)
    if args.json:
        print(json.dumps({"model": model, "server_start_s": load_s, "rows": rows}, indent=2))
        return 0
    print(f"model {model}, server start {load_s:.1f} s, max_tokens {args.max_tokens}, greedy, streaming")
    print(f"{'clients':>7} {'TTFT p50 s':>11} {'TTFT max s':>11} {'decode tok/s':>13} {'aggregate tok/s':>16} "
          f"{'tokens':>7} {'wall s':>7}")
    for r in rows:
        print(f"{r['clients']:>7} {r['ttft_p50_s']:>11.3f} {r['ttft_max_s']:>11.3f} {r['decode_tok_s']:>13.1f} "
              f"{r['aggregate_tok_s']:>16.1f} {r['tokens']:>7} {r['wall_s']:>7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
