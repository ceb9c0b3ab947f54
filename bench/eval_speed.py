"""Evaluation speed: answers per second with batched generation against one row at a time.

    .venv/bin/python bench/eval_speed.py [--rows 24] [--batch 8] [--max-new-tokens 48] [--repeat 2]
                                         [--model M] [--adapter RUN] [--dataset identity_eval]

The same model (the embedded SmolLM2-135M-Instruct, or --model / --adapter) loaded once through
app.eval.loading; the same rows; greedy decoding. Each round times `generate_batch` over every row, first
with --batch rows per batch (left-padded, rows of similar length together: what `ftstudio eval` does),
then one row per call (what a loop over a chat engine does), and repeats (interleaved, as the machine's
load drifts). The answers must be identical for the figure to count: the script prints how many match.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def timed(loaded, ids: list[list[int]], batch: int, max_new_tokens: int) -> tuple[float, list[str]]:
    from app.eval.generate import batches, generate_batch

    answers: list[str] = [""] * len(ids)
    began = time.perf_counter()
    for group in batches([len(i) for i in ids], batch):
        for i, done in zip(group, generate_batch(loaded, [ids[i] for i in group], max_new_tokens)):
            answers[i] = done.text
    return time.perf_counter() - began, answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model")
    parser.add_argument("--adapter")
    parser.add_argument("--dataset", default="identity_eval")
    args = parser.parse_args()

    from app.train.threads import choose_omp_wait_policy

    print(choose_omp_wait_policy())
    from app.config import EvalConfig
    from app.eval.generate import prompt_ids
    from app.eval.loading import load_model
    from app.eval.rows import catalogue_rows

    config = EvalConfig(model_name_or_path=args.model, adapter_name_or_path=args.adapter, eval_dataset=args.dataset,
                        dataset_dir=str(REPO), max_samples=args.rows)
    loaded = load_model(config)
    rows = catalogue_rows(config)[: args.rows]
    _, ids = prompt_ids(loaded, rows, config.cutoff_len)
    print(f"{len(rows)} rows of {args.dataset}, greedy, up to {args.max_new_tokens} new tokens, "
          f"{loaded.describe.get('model')} ({loaded.device})")
    rates: dict[str, list[float]] = {"batched": [], "one_by_one": []}
    answers: dict[str, list[str]] = {}
    for round_ in range(args.repeat):
        for mode, batch in (("batched", args.batch), ("one_by_one", 1)):
            seconds, texts = timed(loaded, ids, batch, args.max_new_tokens)
            rates[mode].append(len(rows) / seconds)
            answers.setdefault(mode, texts)
            print(f"round {round_ + 1}: {mode:<10} {seconds:7.1f} s  {len(rows) / seconds:6.2f} samples/s")
    same = sum(a == b for a, b in zip(answers["batched"], answers["one_by_one"]))
    batched, single = statistics.median(rates["batched"]), statistics.median(rates["one_by_one"])
    print(f"\nbatched (batch {args.batch}): {batched:.2f} samples/s   one row at a time: {single:.2f} samples/s   "
          f"ratio {batched / single:.2f}x   identical greedy answers: {same}/{len(rows)}")
    for i, (a, b) in enumerate(zip(answers["batched"], answers["one_by_one"])):
        if a != b:
            print(f"  row {i} differs:\n    batched: {a!r}\n    single:  {b!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
