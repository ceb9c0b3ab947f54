"""DPO step time with the prompt computed once per pair (app/train/shared_prompt.py) against TRL's two
rows per pair, on the same model, pairs and trainer, alternated pass by pass.

    .venv/bin/python bench/dpo_shared_prompt.py [--pairs 20] [--passes 3] [--data preference_demo]

Each pass runs every pair once as the studio's DPO step does on CPU (one pair per micro-batch: the
policy forward and backward, the reference forward with the LoRA adapter off), in three ways: TRL's
two rows per pair; one row per pair scored by TRL's chunked fused head; one row per pair scored from
the logits at the label positions (the default). The order flips each pass. Prints CPU seconds (this
process's user + system: what other jobs on the machine inflate least) and wall seconds per pair, the
tokens each layout runs, and the mean loss of each (equal up to float rounding).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VARIANTS = ("two rows", "shared prompt, TRL's chunked head", "shared prompt, kept logits (default)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--data", default="preference_demo")
    parser.add_argument("--dataset-dir", default=str(REPO))
    parser.add_argument("--cutoff", type=int, default=512)
    args = parser.parse_args()

    from app.train.threads import choose_omp_wait_policy

    policy = choose_omp_wait_policy()  # as the training worker does, before torch loads
    import torch

    from app.config import JobConfig
    from app.models.source import resolve_model_path
    from app.train import shared_prompt
    from app.train.model_setup import apply_method, load_model, load_tokenizer
    from app.train.recipes import build_dpo_trainer, prepare_data

    model_dir = resolve_model_path(None)
    job = JobConfig(stage="dpo", model_name_or_path=str(model_dir), dataset=args.data, dataset_dir=args.dataset_dir,
                    template="chatml", cutoff_len=args.cutoff, max_samples=args.pairs, lora_rank=8,
                    lora_target="q_proj,v_proj", per_device_train_batch_size=1, gradient_accumulation_steps=1,
                    max_steps=1, save_steps=100000, val_size=0, learning_rate=1e-4)
    tokenizer = load_tokenizer(model_dir, job.template)
    model = apply_method(job, load_model(job, model_dir))
    trainer = build_dpo_trainer(job, model, tokenizer, prepare_data(job, tokenizer), Path("/tmp/ftstudio-bench-sp"), [])
    if not trainer.shared_prompt:
        sys.exit("the shared-prompt path is off for this model or device (see the log)")
    base = trainer.model.get_base_model()
    two_rows_forward = base.forward.two_rows
    batches = [trainer.data_collator([row]) for row in trainer.train_dataset]
    two_row_tokens = sum(b["input_ids"].numel() for b in batches)
    packed_tokens = sum(shared_prompt.pack(b["input_ids"], b["attention_mask"],
                                           b["input_ids"].masked_fill(b["completion_mask"] == 0, -100),
                                           ).input_ids.numel()
                        for b in batches)
    trainer.model.train()

    def one_pass(variant: str) -> tuple[float, float, float]:
        base.forward = two_rows_forward
        if variant != "two rows":
            shared_prompt.wrap_forward(base, logits_head=variant == VARIANTS[2])
        cpu, wall, losses = time.process_time(), time.perf_counter(), []
        for batch in batches:
            trainer.model.zero_grad()
            loss = trainer.compute_loss(trainer.model, batch)
            loss.backward()
            losses.append(loss.item())
        return (time.process_time() - cpu) / len(batches), (time.perf_counter() - wall) / len(batches), \
            statistics.mean(losses)

    results: dict[str, list] = {v: [] for v in VARIANTS}
    for i in range(args.passes):
        for variant in (VARIANTS[::-1] if i % 2 else VARIANTS):
            results[variant].append(one_pass(variant))
            print(f"pass {i + 1} {variant}: CPU s/pair {results[variant][-1][0]:.3f}, "
                  f"wall s/pair {results[variant][-1][1]:.3f}", flush=True)
    print(policy)
    print(f"{len(batches)} pairs, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}; tokens per pass: "
          f"two rows {two_row_tokens:,}, one row per pair {packed_tokens:,} ({two_row_tokens / packed_tokens:.2f}x)")
    base_cpu = statistics.median(r[0] for r in results[VARIANTS[0]])
    for variant in VARIANTS:
        cpu = statistics.median(r[0] for r in results[variant])
        wall = statistics.median(r[1] for r in results[variant])
        print(f"  {variant:40s} CPU s/pair {cpu:.3f} ({base_cpu / cpu:.2f}x)  wall s/pair {wall:.3f}  "
              f"mean loss {results[variant][0][2]:.6f}")


if __name__ == "__main__":
    main()
