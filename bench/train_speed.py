"""Training speed of one SFT LoRA job through the studio's worker: real tokens/s and peak memory.

    .venv/bin/python bench/train_speed.py [--steps 12] [--batch 4] [--cutoff 256] [--modes padding_free,padded]
                                          [--model M] [--dataset identity] [--repeat 1] [--json out.json]

Each mode is `ftstudio train` in a child process (exactly what the UI starts) on the same job: the
embedded SmolLM2-135M-Instruct (or --model), the identity set (rows of mixed length), LoRA r16 on every
linear layer, lr 5e-4, the same seed and so the same batches. Modes:

  padding_free  the worker's default: each batch flattened into one sequence, no padding tokens
  padded        padding_free: false: rows padded to the longest row of their batch
On CPU the worker runs one row per micro-batch (app/train/batching.py), so both modes train the same
way there; they differ on a GPU. For the comparison with LLaMA-Factory, see bench/vs_llamafactory.py.

Reported from the run's events.jsonl: real (non-padding) tokens/s after the first step (warm-up),
seconds per step, and peak memory: the child's peak RSS sampled every 50 ms (CPU), or the worker's
own torch.cuda.max_memory_allocated (GPU, the `mem_mb` of its log events).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def run_mode(mode: str, args, root: Path) -> dict:
    out = root / mode
    cmd = [sys.executable, "-m", "app.cli", "train", "--stage", "sft", "--finetuning_type", "lora",
           "--dataset", args.dataset, "--dataset_dir", str(REPO), "--cutoff_len", str(args.cutoff),
           "--per_device_train_batch_size", str(args.batch), "--gradient_accumulation_steps", "1",
           "--max_steps", str(args.steps), "--logging_steps", "1", "--save_steps", "100000",
           "--learning_rate", "5e-4", "--lora_rank", "16", "--lr_scheduler_type", "constant",
           "--padding_free", "true" if mode == "padding_free" else "false", "--output_dir", str(out)]
    if args.model:
        cmd += ["--model_name_or_path", args.model]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(root / f"{mode}.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        handle = psutil.Process(proc.pid)
        peak_rss = 0
        while proc.poll() is None:
            try:
                peak_rss = max(peak_rss, handle.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    if proc.returncode != 0 or events[-1].get("state") != "finished":
        raise SystemExit(f"{mode}: the run failed, see {root / (mode + '.log')}: {events[-1]}")
    logs = [e for e in events if e["kind"] == "log" and not e.get("final")]
    first, last = logs[0], logs[-1]
    tokens = last["tokens"] - first["tokens"]
    seconds = last["t"] - first["t"]
    step_times = [b["t"] - a["t"] for a, b in zip(logs, logs[1:])]
    device = next((e["device"] for e in events if e.get("name") == "model_ready"), "?")
    gpu_peak = max((e["mem_mb"] for e in logs), default=0) if device == "cuda" else None
    worker_log = (out / "worker.log").read_text(errors="replace")
    omp = next((line.split(": ", 1)[-1] for line in worker_log.splitlines() if "OpenMP" in line), "?")
    return {"mode": mode, "omp": omp, "tokens_per_s": tokens / seconds, "tokens": last["tokens"], "steps": len(logs),
            "s_per_step": statistics.median(step_times), "peak_rss_mb": peak_rss / 2**20, "gpu_peak_mb": gpu_peak,
            "final_loss": last["loss"], "device": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--cutoff", type=int, default=256)
    parser.add_argument("--modes", default="padding_free,padded")
    parser.add_argument("--dataset", default="identity")
    parser.add_argument("--model", default=None, help="model folder or hub id (default: the embedded model)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the modes alternately this many times and keep each mode's best run "
                             "(other work on the machine slows runs down, never up)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    import torch

    best: dict[str, dict] = {}
    for round_ in range(args.repeat):
        for mode in args.modes.split(","):
            print(f"  {mode}: training {args.steps} steps (round {round_ + 1})...", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                row = run_mode(mode, args, Path(tmp))
            if mode not in best or row["tokens_per_s"] > best[mode]["tokens_per_s"]:
                best[mode] = row
    rows = list(best.values())

    device = rows[0]["device"] if rows else "?"
    where = torch.cuda.get_device_name(0) if device == "cuda" else f"{platform.processor() or 'CPU'}, " \
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    print(f"\nSFT LoRA r16 (all linear), {args.dataset}, batch {args.batch}, cutoff_len {args.cutoff}, "
          f"{args.steps} steps, fp32, {device} ({where}); best of {args.repeat}")
    header = f"{'mode':13} {'tokens/s':>9} {'s/step':>7} {'peak RSS MB':>12} {'GPU peak MB':>12} {'final loss':>10}"
    print(header)
    print("-" * len(header))
    for row in rows:
        gpu = f"{row['gpu_peak_mb']:>12.0f}" if row["gpu_peak_mb"] else f"{'-':>12}"
        print(f"{row['mode']:13} {row['tokens_per_s']:>9.1f} {row['s_per_step']:>7.2f} {row['peak_rss_mb']:>12.0f} "
              f"{gpu} {row['final_loss']:>10.3f}")
    if len(rows) == 2:
        print(f"\n{rows[0]['mode']} / {rows[1]['mode']}: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.2f}x "
              "real tokens/s")
    print("tokens/s counts real (non-padding) tokens after the first step.")
    for row in rows:
        print(f"{row['mode']}: {row['omp']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
