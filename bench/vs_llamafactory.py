"""The studio against LLaMA-Factory on the same job, one after the other, on the same machine.

    .venv/bin/python bench/vs_llamafactory.py [--stages sft,dpo] [--repeat 3] [--steps 30] [--batch 4]
                                              [--cutoff 512] [--set key=value ...] [--json out.json]
    make bench-lf

First use installs LLaMA-Factory 0.9.5 into its own virtual environment (.bench/lf-venv, ignored by
git; the studio's .venv is never touched): the same torch version as the studio's, LLaMA-Factory's
other requirements as it pins them, and a stub `torchaudio` (text training never uses it; the real
wheel is built for another torch and fails to import).

One job file of LLaMA-Factory keys is written per stage and given to both programs unchanged (the
studio reads LLaMA-Factory YAML as is): the embedded model's converted folder
(`resolve_model_path(None)`), the same data files registered in one dataset_info.json (LLaMA-Factory's
schema, which the studio uses too), the same hyper-parameters and seed. The number of rows is
steps x batch, so both programs train on exactly the same rows once (one epoch) and see the same
real tokens whatever order their samplers pick. Each program keeps its own defaults for everything the
file does not say (LLaMA-Factory checkpoints gradients unless told otherwise; `--set
disable_gradient_checkpointing=true` turns that off for both).

Each run is `/usr/bin/time` around the program's own command line, in a fresh process:
  samples/s, s/step  from the trainer's own `train_runtime` (both are transformers Trainers)
  tokens/s           real (non-padding) tokens / train_runtime: the studio's count of the trained tokens,
                     LLaMA-Factory's `num_input_tokens_seen` (non-padding), each as its program reports it
  wall s, start s    the whole command; start = wall - train_runtime (imports, model load, tokenizing, save)
  CPU s              user + system CPU seconds of the whole command: on a machine other jobs share, the
                     work done, which their load inflates less than wall time (threads wait passively)
  peak RSS           `/usr/bin/time -f %M` (the process's peak resident memory); on a GPU also peak VRAM
                     (torch.cuda.max_memory_allocated at exit, through the same wrapper for both)
  final loss         the last logged step loss; train loss: the Trainer's mean over all steps

`--repeat N` runs the programs alternately (LF, studio, studio, LF, ...) and prints the median and the
range of each figure. Other work on the machine slows runs down: read ranges, not single numbers, and
note the load printed with them. OMP_WAIT_POLICY is chosen once per run from the machine's load (the
studio's own probe, app/train/threads.py) and given to both programs alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LF_VERSION = "0.9.5"
LF_VENV = REPO / ".bench" / "lf-venv"
DATA_DIR = REPO / ".bench" / "data"
SKIP_REQUIREMENTS = ("torch", "torchaudio", "torchvision")  # torch pinned to the studio's; the others unused
TORCHAUDIO_STUB = '"""Stub: text training never uses torchaudio; the real wheel targets another torch."""\n'

# Runs `module:function` with argv, then prints the process's peak GPU memory (when there is a GPU)
WRAPPER = """
import atexit, importlib, sys
def _peak():
    try:
        import torch
        if torch.cuda.is_available():
            print(f"BENCH_PEAK_VRAM_MB {torch.cuda.max_memory_allocated() / 2**20:.0f} "
                  f"{torch.cuda.max_memory_reserved() / 2**20:.0f}", file=sys.stderr, flush=True)
    except Exception:
        pass
atexit.register(_peak)
target, sys.argv = sys.argv[1], sys.argv[1:]
module, function = target.split(":")
result = getattr(importlib.import_module(module), function)()
sys.exit(result if isinstance(result, int) else 0)
"""


# -- LLaMA-Factory's own environment --------------------------------------------------------------
def pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args], check=True)


def requirement_name(requirement: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(requirement).name.lower()


def ensure_llamafactory(venv: Path = LF_VENV) -> Path:
    """Install LLaMA-Factory into `venv` unless it is already there; returns its python."""
    python = venv / "bin" / "python"
    marker = venv / ".ftstudio-bench-ready"
    if marker.is_file():
        return python
    torch_version = metadata.version("torch").split("+")[0]
    print(f"installing LLaMA-Factory {LF_VERSION} with torch {torch_version} into {venv} (first use, a few "
          "minutes)...", file=sys.stderr, flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(f"torch=={torch_version}\n")
    pip(venv, f"torch=={torch_version}")
    pip(venv, "--no-deps", f"llamafactory=={LF_VERSION}")
    listed = subprocess.run([str(python), "-c", "from importlib.metadata import requires\n"
                             "print('\\n'.join(r for r in requires('llamafactory') if 'extra ==' not in r))"],
                            check=True, capture_output=True, text=True).stdout.split("\n")
    keep = [r.strip() for r in listed if r.strip() and requirement_name(r) not in SKIP_REQUIREMENTS]
    pip(venv, "-c", str(constraints), *keep)
    stub = venv / "stubs" / "torchaudio"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text(TORCHAUDIO_STUB)
    marker.write_text(LF_VERSION + "\n")
    return python


# -- the job ---------------------------------------------------------------------------------------
def write_data(root: Path, sft_rows: int, dpo_rows: int, seed: int = 0) -> None:
    """Mixed-length SFT rows (short answers from the demo sets, some lengthened with paragraphs of the raw
    text demo) and preference pairs, registered in one dataset_info.json that both programs read."""
    rng = random.Random(seed)
    pairs = [(r["instruction"], r["output"]) for r in json.loads((REPO / "data/alpaca_en_zh_demo.json").read_text())]
    for row in json.loads((REPO / "data/identity.json").read_text()):
        turns = row["conversations"]
        pairs.append((turns[0]["value"], turns[1]["value"]))
    paragraphs = [p for p in (REPO / "data/raw_text_demo.txt").read_text().split("\n") if p.strip()]
    sft = []
    for i in range(sft_rows):
        question, answer = pairs[i % len(pairs)]
        extra = rng.choice([0, 0, 0, 1, 1, 2, 3, 5])  # most rows short, a few long: padding matters
        start = rng.randrange(len(paragraphs))
        body = "\n\n".join(paragraphs[(start + k) % len(paragraphs)] for k in range(extra))
        sft.append({"instruction": question, "input": "", "output": answer + ("\n\n" + body if body else "")})
    prefs = json.loads((REPO / "data/preference_demo.json").read_text())
    dpo = [prefs[i % len(prefs)] for i in range(dpo_rows)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "bench_sft.json").write_text(json.dumps(sft, ensure_ascii=False, indent=1))
    (root / "bench_dpo.json").write_text(json.dumps(dpo, ensure_ascii=False, indent=1))
    info = {"bench_sft": {"file_name": "bench_sft.json"},
            "bench_dpo": {"file_name": "bench_dpo.json", "ranking": True,
                          "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen",
                                      "rejected": "rejected"}}}
    (root / "dataset_info.json").write_text(json.dumps(info, indent=1))


def job_keys(stage: str, args, model_dir: Path) -> dict:
    """The LLaMA-Factory job both programs run (output_dir added per run)."""
    steps, batch = (args.steps, args.batch) if stage == "sft" else (args.dpo_steps, args.dpo_batch)
    keys = {
        "model_name_or_path": str(model_dir), "template": "chatml", "stage": stage, "do_train": True,
        "finetuning_type": "lora", "lora_rank": args.lora_rank, "lora_target": args.lora_target,
        "dataset": f"bench_{stage}", "dataset_dir": str(DATA_DIR), "cutoff_len": args.cutoff,
        "max_samples": steps * batch, "overwrite_cache": True, "preprocessing_num_workers": 1,
        "per_device_train_batch_size": batch, "gradient_accumulation_steps": 1, "learning_rate": 1e-4,
        "num_train_epochs": 1.0, "max_steps": steps, "lr_scheduler_type": "constant", "warmup_ratio": 0.0,
        "logging_steps": 1, "save_steps": 100000, "bf16": args.bf16, "seed": 42, "report_to": "none",
        "overwrite_output_dir": True, "plot_loss": False,
    }
    if stage == "dpo":
        keys |= {"pref_beta": 0.1, "pref_loss": "sigmoid"}
    return keys | parse_sets(args.set)


def parse_sets(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


# -- one run ---------------------------------------------------------------------------------------
def run_side(side: str, stage: str, keys: dict, args, root: Path, omp: str) -> dict:
    import yaml

    out = root / f"{side}-{stage}"
    job = dict(keys) | {"output_dir": str(out)}
    if side == "studio":
        job |= parse_sets(args.studio_set)
        python, target, env_extra = REPO / ".venv" / "bin" / "python", "app.cli:main", {"PYTHONPATH": str(REPO)}
        if not python.exists():
            python = Path(sys.executable)
        argv = ["train"]
    else:
        job |= {"include_num_input_tokens_seen": "non_padding"} | parse_sets(args.lf_set)
        python, target = LF_VENV / "bin" / "python", "llamafactory.cli:main"
        env_extra = {"PYTHONPATH": str(LF_VENV / "stubs"), "DISABLE_VERSION_CHECK": "1", "USE_MODELSCOPE_HUB": "0",
                     "WANDB_DISABLED": "true"}
        argv = ["train"]
    job_file = root / f"{side}-{stage}.yaml"
    job_file.write_text(yaml.safe_dump(job, sort_keys=False))
    time_file = root / f"{side}-{stage}.time"
    log_file = root / f"{side}-{stage}.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": omp} | env_extra
    cmd = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", str(time_file), str(python), "-c", WRAPPER, target,
           *argv, str(job_file)]
    with open(log_file, "wb") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root).returncode
    text = log_file.read_text(errors="replace")
    if code != 0:
        keep = REPO / ".bench" / "failed" / f"{side}-{stage}.log"
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(log_file, keep)
        raise RuntimeError(f"{side} {stage} failed (exit {code}); log kept in {keep}:\n{text[-2500:]}")
    wall, user, system, max_kb = time_file.read_text().split()[-4:]
    row = {"side": side, "stage": stage, "wall_s": float(wall), "cpu_s": float(user) + float(system),
           "peak_rss_mb": int(max_kb) / 1024}
    vram = [line.split()[1:] for line in text.splitlines() if line.startswith("BENCH_PEAK_VRAM_MB")]
    if vram:
        row["peak_vram_mb"], row["reserved_vram_mb"] = float(vram[-1][0]), float(vram[-1][1])
    row |= studio_metrics(out) if side == "studio" else lf_metrics(out)
    runtime = row["train_runtime"]
    row["start_s"] = row["wall_s"] - runtime
    row["s_per_step"] = runtime / row["steps"]
    row["tokens_per_s"] = row["tokens"] / runtime if row.get("tokens") else None
    return row


def studio_metrics(out: Path) -> dict:
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["kind"] == "log" and not e.get("final")]
    final = next(e for e in events if e["kind"] == "log" and e.get("final"))
    first_loss = next((e["t"] for e in steps if e.get("loss") is not None), None)
    return {"train_runtime": final["train_runtime"], "samples_per_s": final["train_samples_per_second"],
            "train_loss": final["train_loss"], "final_loss": steps[-1]["loss"], "steps": steps[-1]["step"],
            "tokens": steps[-1].get("tokens"), "first_loss_s": first_loss - events[0]["t"] if first_loss else None}


def lf_metrics(out: Path) -> dict:
    results = json.loads((out / "all_results.json").read_text())
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "loss" in h]
    tokens = max((h.get("num_input_tokens_seen", 0) for h in history), default=0) or None
    return {"train_runtime": results["train_runtime"], "samples_per_s": results["train_samples_per_second"],
            "train_loss": results["train_loss"], "final_loss": steps[-1]["loss"], "steps": steps[-1]["step"],
            "tokens": tokens}


# -- report ----------------------------------------------------------------------------------------
COLUMNS = [("samples_per_s", "samples/s", "{:.2f}"), ("tokens_per_s", "tokens/s", "{:.0f}"),
           ("s_per_step", "s/step", "{:.2f}"), ("wall_s", "wall s", "{:.0f}"), ("start_s", "start s", "{:.0f}"),
           ("cpu_s", "CPU s", "{:.0f}"),
           ("peak_rss_mb", "peak RSS MB", "{:.0f}"), ("peak_vram_mb", "peak VRAM MB", "{:.0f}"),
           ("final_loss", "final loss", "{:.4f}"), ("train_loss", "train loss", "{:.4f}")]


def summary(rows: list[dict], key: str) -> tuple[float, float, float] | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def cell(rows: list[dict], key: str, fmt: str) -> str:
    s = summary(rows, key)
    if s is None:
        return "-"
    median, low, high = s
    if len(rows) == 1 or low == high:
        return fmt.format(median)
    return f"{fmt.format(median)} ({fmt.format(low)}-{fmt.format(high)})"


def report(stage: str, keys: dict, results: list[dict], where: str) -> str:
    lines = [f"\n{stage.upper()} LoRA r{keys['lora_rank']} ({keys['lora_target']}), {keys['max_samples']} rows, batch "
             f"{keys['per_device_train_batch_size']}, cutoff {keys['cutoff_len']}, {keys['max_steps']} steps, "
             f"{'bf16' if keys.get('bf16') else 'fp32'}; {where}",
             "median (min-max) over runs"]
    by_side = {side: [r for r in results if r["side"] == side and r["stage"] == stage] for side in ("lf", "studio")}
    columns = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in results)]
    header = "| program | " + " | ".join(title for _, title, _ in columns) + " |"
    lines += [header, "|" + "---|" * (len(columns) + 1)]
    names = {"lf": f"LLaMA-Factory {LF_VERSION}", "studio": "Finetune Studio"}
    for side, rows in by_side.items():
        if rows:
            lines.append(f"| {names[side]} | " + " | ".join(cell(rows, k, f) for k, _, f in columns) + " |")
    if by_side["lf"] and by_side["studio"]:
        ratios = []
        for key, _, _ in columns:
            a, b = summary(by_side["studio"], key), summary(by_side["lf"], key)
            ratios.append(f"{a[0] / b[0]:.2f}x" if a and b and b[0] else "-")
        lines.append("| studio / LF | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def machine() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    except Exception:  # noqa: BLE001
        pass
    return f"CPU {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="sft,dpo")
    parser.add_argument("--repeat", type=int, default=1, help="runs per program, alternating LF and studio")
    parser.add_argument("--steps", type=int, default=30, help="SFT steps")
    parser.add_argument("--batch", type=int, default=4, help="SFT batch size")
    parser.add_argument("--dpo-steps", type=int, default=10)
    parser.add_argument("--dpo-batch", type=int, default=2)
    parser.add_argument("--cutoff", type=int, default=512)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-target", default="q_proj,v_proj")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a job key for both programs")
    parser.add_argument("--studio-set", action="append", default=[], metavar="KEY=VALUE", help="studio only")
    parser.add_argument("--lf-set", action="append", default=[], metavar="KEY=VALUE", help="LLaMA-Factory only")
    parser.add_argument("--sides", default="lf,studio")
    parser.add_argument("--omp", default="auto", help="OMP_WAIT_POLICY for both: auto (from the load), PASSIVE, ACTIVE")
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument("--keep", help="keep the run folders under this folder")
    args = parser.parse_args()

    from app.models.source import resolve_model_path
    from app.train.threads import BUSY_CORES, other_processes_cpu

    sides = args.sides.split(",")
    if "lf" in sides:
        ensure_llamafactory()
    model_dir = resolve_model_path(None)
    write_data(DATA_DIR, args.steps * args.batch, args.dpo_steps * args.dpo_batch)
    where = machine()
    results: list[dict] = []
    root_cm = tempfile.TemporaryDirectory() if not args.keep else None
    root = Path(args.keep or root_cm.name)
    root.mkdir(parents=True, exist_ok=True)
    try:
        for stage in args.stages.split(","):
            keys = job_keys(stage, args, model_dir)
            for round_ in range(args.repeat):
                order = sides if round_ % 2 == 0 else sides[::-1]
                for side in order:
                    omp = args.omp.upper() if args.omp != "auto" else (
                        "PASSIVE" if other_processes_cpu() >= BUSY_CORES else "ACTIVE")
                    load = os.getloadavg()[0]
                    print(f"  {stage} {side} run {round_ + 1}/{args.repeat} (load {load:.1f}, OMP {omp})...",
                          file=sys.stderr, flush=True)
                    run_root = root / f"{stage}-{side}-{round_}"
                    run_root.mkdir(parents=True, exist_ok=True)
                    row = run_side(side, stage, keys, args, run_root, omp) | {"round": round_, "load": load, "omp": omp}
                    results.append(row)
                    print(f"    {row['samples_per_s']:.2f} samples/s, {row['wall_s']:.0f} s wall, "
                          f"{row['peak_rss_mb']:.0f} MB, final loss {row['final_loss']:.4f}", file=sys.stderr,
                          flush=True)
            print(report(stage, keys, results, where), flush=True)
    finally:
        if root_cm is not None:
            root_cm.cleanup()
    loads = [r["load"] for r in results]
    if loads:
        print(f"\nload average during the runs: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores; "
              f"{time.strftime('%Y-%m-%d')}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
