"""What only a GPU can show, in one run of at most about 8 minutes on an H100 / H200.

    .venv/bin/python bench/gpu_check.py [--out DIR] [--steps 20] [--parts lora_sdpa,lora_fa2,...]
    make gpu-check

Without a CUDA GPU it stops at once with a message and exit code 2. Otherwise each part runs the
studio's own worker (`python -m app.cli train job.yaml`, exactly what the UI starts) in a child
process with its own time limit, so one failure or hang never stops the others:

  lora_sdpa    LoRA r16 (all linear), bf16 (automatic on Ampere+), PyTorch SDPA, padding-free batches
  lora_fa2     the same with FlashAttention-2's varlen kernel (flash_attn: fa2; needs flash-attn)
  lora_liger   the same with Liger's fused kernels (enable_liger_kernel; needs liger-kernel)
  lora_compile the same with torch_compile
  qlora_nf4    QLoRA: NF4 double-quantized base, paged 8-bit AdamW
  full         full fine-tuning, fused AdamW
  zero2, zero3 DeepSpeed ZeRO-2 / ZeRO-3 smoke runs (needs deepspeed)
  ddp          two processes with DDP (needs two GPUs)
  vllm         the vLLM backend generates from the embedded model (needs vllm)
  vs_lf        the side-by-side with LLaMA-Factory on this GPU (bench/vs_llamafactory.py --bf16; needs
               its venv, .bench/lf-venv, which the first `make bench-lf` on a networked machine installs)

The model is built from a config with random weights (speed does not depend on their values): a
Llama-3.2-1B shape (2048 hidden, 16 layers, 8192 intermediate, 32/8 heads) with SmolLM2's 49k
vocabulary so the embedded tokenizer fits, saved once as bf16 safetensors. For each training part it
prints real tokens/s (median over the steps after the first), MFU (model FLOPs 6 x parameters x tokens
plus attention, against the GPU's dense bf16 peak) and peak VRAM (torch.cuda.max_memory_allocated)
next to the studio's memory estimate for the same job. Everything goes to --out (default $OUT when set,
else gpu-check-<time>/): summary.json, summary.md and each part's run folder and log.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NO_GPU = ("gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False). This script measures "
          "GPU training only; run it on a machine with an NVIDIA GPU and a CUDA build of torch.")
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
                    "L40": 181.0, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "A6000": 155.0}
SHAPE = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8, head_dim=64, max_position_embeddings=4096, tie_word_embeddings=True)
LORA = dict(finetuning_type="lora", lora_rank=16, lora_target="all")
PARTS = {
    "lora_sdpa": (LORA | {"flash_attn": "sdpa"}, None),
    "lora_fa2": (LORA | {"flash_attn": "fa2"}, "flash_attn"),
    "lora_liger": (LORA | {"enable_liger_kernel": True}, "liger_kernel"),
    "lora_compile": (LORA | {"torch_compile": True}, None),
    "qlora_nf4": (LORA | {"quantization_bit": 4, "optim": "paged_adamw_8bit"}, "bitsandbytes"),
    "full": ({"finetuning_type": "full", "optim": "adamw_torch_fused", "learning_rate": 1e-5}, None),
    "zero2": (LORA | {"distributed_strategy": "deepspeed_zero2", "num_processes": 1}, "deepspeed"),
    "zero3": ({"finetuning_type": "full", "distributed_strategy": "deepspeed_zero3", "num_processes": 1,
               "learning_rate": 1e-5}, "deepspeed"),
    "ddp": (LORA | {"distributed_strategy": "ddp", "num_processes": 2}, None),
}
EXTRA_PARTS = ("vllm", "vs_lf")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def require_cuda() -> str:
    import torch

    if not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        raise SystemExit(2)
    return torch.cuda.get_device_name(0)


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k.lower() in name.lower()), None)


def build_model(folder: Path) -> None:
    """A 1B-shaped llama with random weights (made on the GPU: seconds) and the embedded model's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from app.models.source import resolve_model_path

    if (folder / "config.json").is_file():
        return
    source = resolve_model_path(None)
    config = AutoConfig.from_pretrained(source)
    config.update(SHAPE)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)


def count_params(folder: Path) -> int:
    from app.models.info import describe_model

    return describe_model(folder).n_params


def write_data(root: Path, rows: int = 512) -> None:
    """Chat rows of 200-1,500 tokens from the repo's demo texts (mixed lengths, long enough for a GPU)."""
    import random

    rng = random.Random(0)
    paragraphs = [p for p in (REPO / "data/raw_text_demo.txt").read_text().split("\n") if p.strip()]
    out = []
    for i in range(rows):
        n = rng.choice([2, 4, 6, 10, 14])
        start = rng.randrange(len(paragraphs))
        text = "\n\n".join(paragraphs[(start + k) % len(paragraphs)] for k in range(n))
        out.append({"instruction": f"Write part {i} of the island's story.", "input": "", "output": text})
    root.mkdir(parents=True, exist_ok=True)
    (root / "gpu_sft.json").write_text(json.dumps(out))
    (root / "dataset_info.json").write_text(json.dumps({"gpu_sft": {"file_name": "gpu_sft.json"}}))


def run_part(name: str, fields: dict, args, model: Path, data: Path, out: Path) -> dict:
    import yaml

    run = out / name
    job = {"model_name_or_path": str(model), "template": "chatml", "stage": "sft", "dataset": "gpu_sft",
           "dataset_dir": str(data), "cutoff_len": args.cutoff, "per_device_train_batch_size": args.batch,
           "gradient_accumulation_steps": 1, "learning_rate": 1e-4, "max_steps": args.steps, "logging_steps": 1,
           "save_steps": 100000, "lr_scheduler_type": "constant", "output_dir": str(run)} | fields
    job_file = out / f"{name}.yaml"
    job_file.write_text(yaml.safe_dump(job, sort_keys=False))
    started = time.time()
    with open(out / f"{name}.log", "wb") as handle:
        try:
            code = subprocess.run([sys.executable, "-m", "app.cli", "train", str(job_file)], cwd=REPO,
                                  stdout=handle, stderr=subprocess.STDOUT, timeout=args.part_timeout,
                                  env=os.environ | {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}).returncode
        except subprocess.TimeoutExpired:
            return {"part": name, "status": "timeout", "seconds": round(time.time() - started)}
    events_file = run / "events.jsonl"
    events = [json.loads(line) for line in events_file.read_text().splitlines()] if events_file.is_file() else []
    done = events[-1] if events else {}
    if code != 0 or done.get("state") != "finished":
        return {"part": name, "status": "failed", "error": done.get("error") or f"exit {code}; see {name}.log",
                "seconds": round(time.time() - started)}
    steps = [e for e in events if e["kind"] == "log" and not e.get("final")]
    rates = [e["tokens_per_s"] for e in steps[1:] if e.get("tokens_per_s")]
    memory = next((e for e in events if e.get("name") == "memory"), {})
    return {"part": name, "status": "ok", "seconds": round(time.time() - started),
            "tokens_per_s": statistics.median(rates) if rates else None,
            "peak_vram_mb": max((e.get("mem_mb") or 0) for e in steps) if steps else None,
            "estimate_mb": memory.get("estimate_mb"), "final_loss": steps[-1].get("loss") if steps else None}


def mfu(row: dict, n_params: int, shape: dict, cutoff: int, peak: float | None) -> float | None:
    if not row.get("tokens_per_s") or not peak:
        return None
    flops_per_token = 6 * n_params + 6 * shape["num_hidden_layers"] * shape["hidden_size"] * cutoff  # causal attn
    return row["tokens_per_s"] * flops_per_token / (peak * 1e12)


def vllm_part(out: Path) -> dict:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return {"part": "vllm", "status": "skipped", "error": "vllm is not installed"}
    code = ("from vllm import LLM, SamplingParams; from app.models.source import resolve_model_path\n"
            "llm = LLM(model=str(resolve_model_path(None)), gpu_memory_utilization=0.3, enforce_eager=True)\n"
            "out = llm.generate(['The capital of France is'], SamplingParams(max_tokens=8, temperature=0))\n"
            "print('VLLM', repr(out[0].outputs[0].text))")
    with open(out / "vllm.log", "wb") as handle:
        try:
            done = subprocess.run([sys.executable, "-c", code], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                  timeout=180, env=os.environ | {"PYTHONPATH": str(REPO)})
        except subprocess.TimeoutExpired:
            return {"part": "vllm", "status": "timeout"}
    text = (out / "vllm.log").read_text(errors="replace")
    answer = next((line for line in text.splitlines() if line.startswith("VLLM ")), None)
    return {"part": "vllm", "status": "ok" if done.returncode == 0 and answer else "failed", "answer": answer}


def vs_lf_part(out: Path, args) -> dict:
    if not (REPO / ".bench" / "lf-venv" / ".ftstudio-bench-ready").is_file():
        return {"part": "vs_lf", "status": "skipped", "error": "LLaMA-Factory's venv (.bench/lf-venv) is not "
                "installed here; run `make bench-lf` once on a machine with network access to PyPI"}
    cmd = [sys.executable, str(REPO / "bench" / "vs_llamafactory.py"), "--bf16", "--stages", "sft", "--steps", "30",
           "--batch", "8", "--cutoff", "1024", "--json", str(out / "vs_lf.json")]
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        return {"part": "vs_lf", "status": "timeout"}
    (out / "vs_lf.txt").write_text(done.stdout + done.stderr)
    return {"part": "vs_lf", "status": "ok" if done.returncode == 0 else "failed", "table": done.stdout.strip()}


def skip_reason(name: str, needs: str | None, n_gpus: int) -> str | None:
    import importlib.util

    if needs and importlib.util.find_spec(needs) is None:
        return f"{needs} is not installed"
    if name == "ddp" and n_gpus < 2:
        return f"needs two GPUs, {n_gpus} visible"
    return None


def markdown(gpu: str, rows: list[dict], n_params: int) -> str:
    lines = [f"# GPU check: {gpu}, {time.strftime('%Y-%m-%d %H:%M')}", "",
             f"Model: Llama-3.2-1B shape, random weights, {n_params / 1e9:.2f} B parameters; SFT, real tokens.", "",
             "| part | status | tokens/s | MFU | peak VRAM MB | estimate MB | est. error | final loss | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        err = (f"{100 * (r['estimate_mb'] - r['peak_vram_mb']) / r['peak_vram_mb']:+.0f}%"
               if r.get("estimate_mb") and r.get("peak_vram_mb") else "-")
        cells = [r["part"], r["status"] + (f": {r['error']}" if r.get("error") else ""),
                 f"{r['tokens_per_s']:.0f}" if r.get("tokens_per_s") else "-",
                 f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-",
                 f"{r['peak_vram_mb']:.0f}" if r.get("peak_vram_mb") else "-",
                 f"{r['estimate_mb']:.0f}" if r.get("estimate_mb") else "-", err,
                 f"{r['final_loss']:.3f}" if r.get("final_loss") is not None else "-", str(r.get("seconds", "-"))]
        lines.append("| " + " | ".join(cells) + " |")
    for r in rows:
        if r.get("table"):
            lines += ["", "Side by side with LLaMA-Factory:", "", r["table"]]
        if r.get("answer"):
            lines += ["", f"vLLM: {r['answer']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--parts", default=",".join([*PARTS, *EXTRA_PARTS]))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--cutoff", type=int, default=2048)
    parser.add_argument("--part-timeout", type=int, default=75, help="seconds per training part")
    args = parser.parse_args()

    gpu = require_cuda()  # before anything slow
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, data = out / "model-1b-random", out / "data"
    log(f"gpu_check on {gpu}: building the model and data in {out}...")
    build_model(model)
    write_data(data)
    n_params, peak = count_params(model), peak_tflops(gpu)
    rows: list[dict] = []
    for name in args.parts.split(","):
        if name in PARTS:
            fields, needs = PARTS[name]
            reason = skip_reason(name, needs, torch.cuda.device_count())
            if reason:
                row = {"part": name, "status": "skipped", "error": reason}
            else:
                log(f"  {name}...")
                try:
                    row = run_part(name, fields, args, model, data, out)
                except Exception as exc:  # noqa: BLE001 - one part never stops the others
                    row = {"part": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                row["mfu"] = mfu(row, n_params, SHAPE, args.cutoff, peak)
        elif name == "vllm":
            row = vllm_part(out)
        elif name == "vs_lf":
            row = vs_lf_part(out, args)
        else:
            row = {"part": name, "status": "skipped", "error": "unknown part"}
        rows.append(row)
        log(f"    {json.dumps(row)[:300]}")
    summary = {"gpu": gpu, "torch": torch.__version__, "n_params": n_params, "peak_bf16_tflops": peak,
               "steps": args.steps, "batch": args.batch, "cutoff_len": args.cutoff, "parts": rows,
               "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    text = markdown(gpu, rows, n_params)
    (out / "summary.md").write_text(text)
    shutil.rmtree(model, ignore_errors=True)  # gigabytes of random weights: not worth bringing back
    print(text)


if __name__ == "__main__":
    main()
