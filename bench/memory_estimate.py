"""The memory estimate (app/train/memory.py) against the measured peak, per training method.

    .venv/bin/python bench/memory_estimate.py [--methods lora,qlora,freeze,full] [--batch 2] [--cutoff 256]
                                              [--steps 3] [--model M]

`identity` runs the README's demo job (examples/identity_lora.yaml, SFT on rows of mixed length) and
compares the measured peak with both estimates: before tokenizing (every row cutoff_len long) and from
the tokenized rows (the worker's `memory` stage event).

Each other method trains `--steps` steps of continued pre-training on raw_text_demo through the worker's
`run_job`, in a fresh child process. Pre-training packs the text into blocks of exactly cutoff_len
tokens, so every row is full length: the estimate's assumption (it sizes activations for
batch x cutoff_len real tokens, the worst case of a padding-free batch).

Measured, on CPU (the child samples its own RSS every 5 ms):
  peak   the highest RSS while training (from the `training` stage event to the `saving` one)
  delta  peak minus the RSS after imports, before the model loads: what the estimate sizes without
         its fixed runtime overhead (Python, torch, tokenizer)
On a GPU: torch.cuda.max_memory_allocated() (delta; the CUDA context is part of the overhead term).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = {
    "lora": dict(finetuning_type="lora", lora_rank=16),
    "qlora": dict(finetuning_type="lora", lora_rank=16, quantization_bit=4),
    "freeze": dict(finetuning_type="freeze", freeze_trainable_layers=2),
    "full": dict(finetuning_type="full"),
}


IDENTITY_DEMO = REPO / "examples" / "identity_lora.yaml"


def job_for(method: str, args, output_dir: str):
    from app.config import JobConfig

    if method == "identity":  # the README's demo job, as a user runs it (a few steps of it)
        from app.config.schema import read_yaml_mapping

        data = read_yaml_mapping(IDENTITY_DEMO) | {"dataset_dir": str(REPO), "output_dir": output_dir,
                                                    "max_steps": args.steps, "save_steps": 10_000,
                                                    "eval_steps": 10_000, "val_size": 0.0, "logging_steps": 1}
        return JobConfig.from_dict(data | ({"model_name_or_path": args.model} if args.model else {}))
    return JobConfig(model_name_or_path=args.model, stage="pt", dataset="raw_text_demo", dataset_dir=str(REPO),
                     cutoff_len=args.cutoff, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                     max_steps=args.steps, logging_steps=1, save_steps=10_000, learning_rate=1e-5,
                     output_dir=output_dir, **METHODS[method])


class RssSampler(threading.Thread):
    """Samples this process's RSS; `peak_between(t0, t1)` is the highest sample in that window."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(os.getpid())
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            self.samples.append((time.time(), self.process.memory_info().rss))
            time.sleep(self.interval)

    def peak_between(self, start: float, end: float) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)


def child(method: str, args) -> dict:
    """Runs in the child process: train one method, report the measured peaks."""
    import datasets  # noqa: F401 - warm imports: the baseline includes the runtime, as the estimate's overhead
    import peft  # noqa: F401
    import psutil
    import torch
    import transformers  # noqa: F401
    import trl  # noqa: F401

    from app.train.worker import run_job

    on_gpu = torch.cuda.is_available()
    baseline = psutil.Process(os.getpid()).memory_info().rss
    sampler = RssSampler()
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        job = job_for(method, args, str(Path(tmp) / "run"))
        code = run_job(job)
        events = [json.loads(line) for line in (Path(tmp) / "run" / "events.jsonl").read_text().splitlines()]
    sampler.running = False
    sampler.join()
    if code != 0:
        raise SystemExit(f"{method}: training failed: {events[-1]}")
    stage_time = {e["name"]: e["t"] for e in events if e["kind"] == "stage"}
    logs = [e for e in events if e["kind"] == "log" and not e.get("final")]
    train_peak = sampler.peak_between(stage_time["training"], stage_time["saving"])
    memory = next((e for e in events if e.get("name") == "memory"), {})
    result = {"method": method, "baseline_mb": baseline / 2**20, "peak_mb": train_peak / 2**20,
              "data_estimate_mb": memory.get("estimate_mb"),
              "load_peak_mb": sampler.peak_between(stage_time["loading_model"], stage_time["training"]) / 2**20,
              "tokens_per_s": [e["tokens_per_s"] for e in logs if e.get("tokens_per_s")], "on_gpu": on_gpu}
    if on_gpu:
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def estimate(method: str, args, on_gpu: bool):
    from app.models.info import describe_model
    from app.models.source import resolve_model_path
    from app.train.memory import estimate_memory

    info = describe_model(resolve_model_path(args.model))
    return estimate_memory(info, job_for(method, args, "/tmp/unused"), on_gpu=on_gpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lora,qlora,freeze,full,identity",
                        help="lora, qlora, freeze, full (pre-training, full-length rows) and identity (the demo job)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--cutoff", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--model", default=None, help="model folder or hub id (default: the embedded model)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)), flush=True)
        return

    rows = []
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--child", method, "--batch", str(args.batch), "--cutoff", str(args.cutoff),
               "--steps", str(args.steps)] + (["--model", args.model] if args.model else [])
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                              env=os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(f"{method}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        measured = json.loads(lines[-1][len("RESULT "):])
        est = estimate(method, args, measured["on_gpu"])
        rows.append(measured | {"estimate": est.as_dict()})
        print(f"  {method}: measured", file=sys.stderr, flush=True)

    print(f"\nbatch {args.batch} x cutoff_len {args.cutoff} (full-length rows), {args.steps} steps, "
          f"{'GPU' if rows and rows[0]['on_gpu'] else 'CPU'}; MB")
    header = (f"{'method':8} {'trainable':>11} {'est. total':>10} {'peak RSS':>9} {'error':>7} "
              f"{'est. model':>10} {'peak-base':>9} {'error':>7} {'load peak':>9}")
    print(header)
    print("-" * len(header))
    for row in rows:
        est = row["estimate"]
        model_part = est["total_mb"] - est["overhead_mb"]
        measured_delta = row.get("gpu_peak_mb", row["peak_mb"] - row["baseline_mb"])
        total_err = 100 * (est["total_mb"] - row["peak_mb"]) / row["peak_mb"]
        delta_err = 100 * (model_part - measured_delta) / measured_delta
        print(f"{row['method']:8} {est['trainable_params']:>11,} {est['total_mb']:>10.0f} {row['peak_mb']:>9.0f} "
              f"{total_err:>+6.1f}% {model_part:>10.0f} {measured_delta:>9.0f} {delta_err:>+6.1f}% "
              f"{row['load_peak_mb']:>9.0f}")
    demo = [row for row in rows if row["method"] == "identity"]
    for row in demo:
        worst, data, peak = row["estimate"]["total_mb"], row["data_estimate_mb"], row["peak_mb"]
        print(f"\nidentity demo ({IDENTITY_DEMO.name}: batch 4, cutoff 256, LoRA r16 all linear): measured peak "
              f"RSS {peak:.0f} MB; estimate before tokenizing (full-length rows) {worst:.0f} MB "
              f"({100 * (worst - peak) / peak:+.0f}%), from the tokenized rows {data:.0f} MB "
              f"({100 * (data - peak) / peak:+.0f}%)")
    print("\nest. model = weights + gradients + optimizer + activations (the estimate without its runtime overhead);"
          "\npeak-base = peak RSS while training minus RSS after imports (GPU: max_memory_allocated).")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
