"""Serving speed on one machine, in one run: bare generate, the API with 1 and 16 clients, chat while training.

    .venv/bin/python bench/api_latency.py [--model M] [--max-tokens 64] [--clients 16] [--omp auto|passive|active]

Every figure comes from its own process with the same OpenMP wait policy (decided once, as the training
worker decides it: app/train/threads.py), one after the other:
  1. bare `model.generate` of the same prompt, greedy: the floor one stream can reach;
  2. `ftstudio api` (the batched transformers backend) with 1 streaming client, then N at once: aggregate
     tokens/s (all completion tokens / wall time) and time to first token p50/p95. Greedy answers of the
     N clients must equal the single client's (a speed-up counts only with equal results);
  3. the Chat tab's engine alone, then while a training run (examples/identity_lora.yaml) steps next to it.
Goals (issue 11): N clients >= 6x one client; one client >= 90% of bare generate; chat while training >=
50% of idle chat. Each figure is measured --repeat times, interleaved (bare, 1 client, N clients, again),
and the best run is kept: other jobs on a shared machine only ever slow a run down. Tokens per CPU-second
of the generating process are printed too: on a machine other jobs keep busy, they show what batching
gains with the CPU time it gets, which wall-clock rates cannot.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
CHAT_PROMPT = [{"role": "user", "content": "Tell me about the history of bread."}]


# ------------------------------------------------------------------ child processes (each loads the model)
def child_bare(model: str | None, max_tokens: int) -> dict:
    import torch

    from app.chat.engine import ChatEngine

    engine = ChatEngine(model)
    ids = torch.tensor([engine.prompt_ids(PROMPT)])
    kwargs = {"do_sample": False, "max_new_tokens": max_tokens, "min_new_tokens": max_tokens,
              "pad_token_id": engine.tokenizer.eos_token_id}
    with torch.inference_mode():
        engine.base.generate(ids, **(kwargs | {"max_new_tokens": 4, "min_new_tokens": 4}))  # warm-up
        rates, per_cpu = [], []
        for _ in range(2):
            start, cpu = time.perf_counter(), time.process_time()
            out = engine.base.generate(ids, **kwargs)
            new = out.shape[1] - ids.shape[1]
            rates.append(new / (time.perf_counter() - start))
            per_cpu.append(new / max(time.process_time() - cpu, 1e-9))
    return {"tok_s": max(rates), "tok_cpu_s": max(per_cpu)}


def child_chat(model: str | None, max_tokens: int) -> dict:
    from app.chat.engine import ChatEngine

    engine = ChatEngine(model)
    engine.generate(CHAT_PROMPT, max_new_tokens=4)  # warm-up
    rates = []
    for _ in range(2):
        start = time.perf_counter()
        reply = engine.generate(CHAT_PROMPT, max_new_tokens=max_tokens)
        rates.append(reply.completion_tokens / (time.perf_counter() - start))
    engine.close()
    return {"tok_s": max(rates)}


def run_child(part: str, args: argparse.Namespace, env: dict[str, str]) -> dict:
    cmd = [sys.executable, __file__, "--child", part, "--max-tokens", str(args.max_tokens)]
    if args.model:
        cmd += ["--model", args.model]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{part} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the API server over HTTP
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | None, port: int, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
    if model:
        cmd += ["--model", model]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=env | {"FTSTUDIO_API_KEY": ""}, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    raise SystemExit("server did not start in 600 s")


def one_stream(url: str, model: str, max_tokens: int) -> tuple[float, int, str]:
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft, tokens, parts = None, 0, []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=None) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                parts.append(chunk["choices"][0]["delta"]["content"])
                ttft = ttft if ttft is not None else time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (ttft if ttft is not None else time.perf_counter() - start), tokens, "".join(parts)


def run_level(url: str, model: str, clients: int, max_tokens: int, server_pid: int) -> dict:
    import psutil

    process = psutil.Process(server_pid)
    cpu_before = sum(process.cpu_times()[:2])
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        stats = list(pool.map(lambda _: one_stream(url, model, max_tokens), range(clients)))
    wall = time.perf_counter() - start
    cpu = sum(process.cpu_times()[:2]) - cpu_before
    ttfts = sorted(s[0] for s in stats)
    return {"clients": clients, "tok_s": sum(s[1] for s in stats) / wall,
            "tok_cpu_s": sum(s[1] for s in stats) / max(cpu, 1e-9), "ttft_p50": statistics.median(ttfts),
            "ttft_p95": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))], "texts": [s[2] for s in stats]}


# ------------------------------------------------------------------ chat next to a training run
def start_training(folder: Path, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "app.cli", "train", "examples/identity_lora.yaml", "--output_dir",
           str(folder / "run"), "--max_steps", "2000", "--save_steps", "100000", "--eval_steps", "100000"]
    log = open(folder / "train.log", "wb")
    worker = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    events = folder / "run" / "events.jsonl"
    deadline = time.time() + 900
    while time.time() < deadline and worker.poll() is None:
        if events.exists() and '"kind": "log"' in events.read_text(encoding="utf-8"):
            return worker
        time.sleep(1.0)
    stop(worker)
    raise SystemExit(f"the training run did not start stepping: see {folder / 'train.log'}")


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def omp_env(choice: str) -> tuple[dict[str, str], str]:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if choice == "auto":
        sys.path.insert(0, str(ROOT))
        from app.train.threads import choose_omp_wait_policy

        saved = os.environ.pop("OMP_WAIT_POLICY", None)
        note = choose_omp_wait_policy()
        chosen = os.environ.pop("OMP_WAIT_POLICY", None)
        if saved is not None:
            os.environ["OMP_WAIT_POLICY"] = saved
        if chosen:
            env["OMP_WAIT_POLICY"] = chosen
        return env, note
    env["OMP_WAIT_POLICY"] = choice.upper()
    return env, f"OMP_WAIT_POLICY={choice.upper()} (--omp)"


def load_average() -> str:
    """Other jobs' load, to read the wall-clock figures by (absent on Windows)."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="base model (default: the embedded SmolLM2-135M)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--omp", choices=["auto", "passive", "active"], default="auto")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each figure, interleaved; the best is kept")
    parser.add_argument("--skip-training", action="store_true", help="leave out the chat-while-training rows")
    parser.add_argument("--child", choices=["bare", "chat"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        print(json.dumps((child_bare if args.child == "bare" else child_chat)(args.model, args.max_tokens)))
        return 0
    env, policy = omp_env(args.omp)
    env["PYTHONPATH"] = str(ROOT)
    print(f"OpenMP: {policy}; max_tokens {args.max_tokens}, greedy; prompt {PROMPT[0]['content']!r}; "
          f"load average {load_average()}", flush=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args.model, port, env)
    bares, singles, manies = [], [], []
    try:
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        one_stream(url, model, 4)  # warm-up
        for _ in range(args.repeat):
            bares.append(run_child("bare", args, env))
            singles.append(run_level(url, model, 1, args.max_tokens, server.pid))
            manies.append(run_level(url, model, args.clients, args.max_tokens, server.pid))
    finally:
        stop(server)
    bare = max(bares, key=lambda r: r["tok_s"])
    single = max(singles, key=lambda r: r["tok_s"])
    many = max(manies, key=lambda r: r["tok_s"])
    for what, runs in (("bare", bares), ("1 client", singles), (f"{args.clients} clients", manies)):
        print(f"runs, {what}: tokens/s {[round(r['tok_s'], 1) for r in runs]}, tokens per CPU-second "
              f"{[round(r['tok_cpu_s'], 1) for r in runs]}", flush=True)
    cpu = {"bare": max(r["tok_cpu_s"] for r in bares), "one": max(r["tok_cpu_s"] for r in singles),
           "many": max(r["tok_cpu_s"] for r in manies)}
    equal = all(text == single["texts"][0] for level in manies for text in level["texts"])
    rows = [("bare model.generate, 1 sequence", bare["tok_s"], None, None),
            ("API, 1 streaming client", single["tok_s"], single["ttft_p50"], single["ttft_p95"]),
            (f"API, {args.clients} streaming clients", many["tok_s"], many["ttft_p50"], many["ttft_p95"])]
    if not args.skip_training:
        idles = [run_child("chat", args, env)["tok_s"] for _ in range(args.repeat)]
        with tempfile.TemporaryDirectory(prefix="bench-train-") as folder:
            worker = start_training(Path(folder), env)
            try:
                busies = [run_child("chat", args, env)["tok_s"] for _ in range(args.repeat)]
            finally:
                stop(worker)
        idle, busy = max(idles), max(busies)
        print(f"runs (tokens/s): chat idle {[round(x, 1) for x in idles]}, "
              f"chat with training {[round(x, 1) for x in busies]}", flush=True)
        rows += [("chat engine, idle machine", idle, None, None),
                 ("chat engine, training run active", busy, None, None)]
    print(f"\n| {'what':<36} | tokens/s | TTFT p50 s | TTFT p95 s |\n|{'-' * 38}|---------:|-----------:|-----------:|")
    for name, rate, p50, p95 in rows:
        cell = lambda v: f"{v:10.2f}" if v is not None else " " * 10  # noqa: E731
        print(f"| {name:<36} | {rate:8.1f} | {cell(p50)} | {cell(p95)} |")
    print(f"\n{args.clients} clients / 1 client: {many['tok_s'] / single['tok_s']:.1f}x wall-clock, "
          f"{cpu['many'] / cpu['one']:.1f}x per CPU-second (goal >= 6x); "
          f"{args.clients} greedy answers equal the single client's: {'yes' if equal else 'NO'}")
    print(f"1 client / bare generate: {single['tok_s'] / bare['tok_s']:.0%} wall-clock, "
          f"{cpu['one'] / cpu['bare']:.0%} per CPU-second (goal >= 90%)")
    print(f"load average at the end: {load_average()} ({os.cpu_count()} cores)")
    if not args.skip_training:
        print(f"chat while training / idle: {rows[4][1] / rows[3][1]:.0%} (goal >= 50%)")
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
