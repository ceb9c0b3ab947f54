"""`ftstudio eval`: predictions and scores of one model on held-out rows, in its own run folder.

    runs/eval-<model>-<time>/  eval.yaml  command.txt  state.json  events.jsonl  worker.log
                               generated_predictions.jsonl  predict_results.json  eval_rows.jsonl

Events (besides the lifecycle's `done`):
    stage     name (validating | loading_model | generating | scoring | saving), message
    progress  phase (generate | loss), done, total, samples_per_s, eta_s
A stop (Stop in the UI, SIGTERM) ends generation at the next token; the rows answered so far are scored
and written with "partial": true, and the run ends `stopped`.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.config import EvalConfig
from app.train.lifecycle import RunContext, setup_logging, supervise
from app.train.runfolder import RunFolder

log = logging.getLogger("ftstudio.eval")


def run_eval(config: EvalConfig) -> int:
    """Run one evaluation to its end; the process exit code (0 finished or stopped, 1 failed)."""
    from app.train.threads import choose_omp_wait_policy

    threads = choose_omp_wait_policy()  # before anything loads torch
    config = config.with_run_folder()
    run = RunFolder(Path(str(config.output_dir)))
    run.create(config)
    setup_logging(run)
    log.info("%s", threads)

    def body(ctx: RunContext) -> tuple[str, str | None]:
        try:
            return evaluate(config, run.path, ctx.events.append, lambda: ctx.stop.requested, ctx), None
        except user_errors() as exc:  # the user's to fix: one clear message, no traceback on the terminal
            message = str(exc)
            print(f"eval failed: {message}", file=sys.stderr)
            return "failed", message

    return supervise(run, body)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the user has something to fix (imported late: they pull in torch)."""
    from app.chat.adapters import AdapterError
    from app.config import ConfigError
    from app.data.errors import DataError
    from app.eval.loading import LoadError
    from app.eval.rows import RowsError
    from app.models.source import ModelSourceError

    return AdapterError, ConfigError, DataError, LoadError, RowsError, ModelSourceError, FileNotFoundError


Emit = Callable[..., Any]


def evaluate(config: EvalConfig, out: Path, emit: Emit, should_stop: Callable[[], bool],
             ctx: RunContext | None = None) -> str:
    """Predict, score and write the files into `out`; returns "finished" or "stopped".

    `emit(kind, **fields)` receives the progress events. Callable without a run folder's lifecycle (the
    benchmark, the Export tab's in-process comparison); `ctx`, when given, is told when a stop may no
    longer abort at once (from the first batch on, a stop ends generation and keeps what is done).
    """
    from app.eval.loading import load_model
    from app.eval.rows import catalogue_rows, validation_rows

    emit("stage", name="validating", message=f"checking {config.data_label}")
    rows = catalogue_rows(config) if not config.validation_run else None
    emit("stage", name="loading_model", message=f"loading {config.model_label()}")
    loaded = load_model(config, lambda message: emit("stage", name="loading_model", message=message))
    if rows is None:
        rows = validation_rows(config, loaded.tokenizer)
    if not rows:
        raise ValueError("no rows to evaluate")
    if ctx is not None:
        ctx.interruptible = False  # from here a stop only sets the flag: the rows done so far are kept
    predictions, completions, seconds = _generate(config, loaded, rows, emit, should_stop)
    stopped = should_stop()
    done_rows = [row for row, completion in zip(rows, completions) if completion is not None]
    emit("stage", name="scoring", message=f"teacher-forced loss and BLEU/ROUGE of {len(done_rows)} rows")
    losses = _losses(config, loaded, done_rows, emit, should_stop)
    emit("stage", name="saving", message=f"writing predictions and scores to {out}")
    _write(config, out, loaded, rows, predictions, completions, losses, seconds, partial=stopped)
    return "stopped" if stopped else "finished"


def _generate(config: EvalConfig, loaded, rows, emit: Emit, should_stop) -> tuple[list, list, float]:
    from app.eval.generate import batches, generate_batch, prompt_ids

    texts, ids = prompt_ids(loaded, rows, config.cutoff_len)
    completions: list[Any] = [None] * len(rows)
    if config.temperature > 0:
        import torch

        torch.manual_seed(config.seed)
    emit("stage", name="generating", message=f"generating answers for {len(rows)} rows, "
                                              f"{config.per_device_eval_batch_size} at a time")
    began, done = time.time(), 0
    for batch in batches([len(i) for i in ids], config.per_device_eval_batch_size):
        if should_stop():
            break
        answers = generate_batch(loaded, [ids[i] for i in batch], config.max_new_tokens, config.temperature,
                                 config.top_p, should_stop)
        if any(a.finish_reason == "cancelled" for a in answers):
            break  # half-written answers would score as if they were complete
        for i, answer in zip(batch, answers):
            completions[i] = answer
        done += len(batch)
        elapsed = time.time() - began
        rate = done / elapsed if elapsed > 0 else None
        emit("progress", phase="generate", done=done, total=len(rows), samples_per_s=round(rate, 3) if rate else None,
             eta_s=round((len(rows) - done) / rate, 1) if rate else None)
    return texts, completions, time.time() - began


def _losses(config: EvalConfig, loaded, rows, emit: Emit, should_stop) -> list[tuple[float, int]]:
    from app.eval.generate import loss_rows, nll_batch

    tokenized = loss_rows(loaded, rows, config.cutoff_len)
    out: list[tuple[float, int]] = []
    size = config.per_device_eval_batch_size
    for start in range(0, len(tokenized), size):
        out += nll_batch(loaded, tokenized[start : start + size])
        emit("progress", phase="loss", done=len(out), total=len(tokenized))
    return out


def _write(config: EvalConfig, out: Path, loaded, rows, prompts, completions, losses, seconds: float,
           partial: bool) -> dict[str, Any]:
    from app.eval.metrics import mean_scores, score_row
    from app.eval.results import write_predictions, write_results

    predictions, details, scores = [], [], []
    answered = [(row, prompt, c) for row, prompt, c in zip(rows, prompts, completions) if c is not None]
    for (row, prompt, completion), (nll, count) in zip(answered, losses):
        row_scores = score_row(completion.text, row.reference)
        scores.append(row_scores)
        predictions.append({"prompt": prompt, "predict": completion.text, "label": row.reference})
        details.append({"index": row.index, "dataset": row.dataset, "question": row.question, **row_scores,
                        "loss": round(nll / count, 6) if count else None, "prompt_tokens": completion.prompt_tokens,
                        "completion_tokens": completion.completion_tokens, "finish_reason": completion.finish_reason})
    write_predictions(out, predictions, details)
    mean = mean_scores(scores)
    nll_total, tokens = sum(n for n, _ in losses), sum(c for _, c in losses)
    eval_loss = nll_total / tokens if tokens else None
    n = len(answered)
    steps = math.ceil(n / config.per_device_eval_batch_size) if n else 0
    results = {f"predict_{key}": round(value, 4) for key, value in mean.items()} | {
        "predict_runtime": round(seconds, 4),
        "predict_samples_per_second": round(n / seconds, 3) if seconds > 0 else None,
        "predict_steps_per_second": round(steps / seconds, 3) if seconds > 0 else None,
        "eval_loss": round(eval_loss, 6) if eval_loss is not None else None,
        "perplexity": round(math.exp(eval_loss), 4) if eval_loss is not None else None,
        "predict_samples": n,
        "generated_tokens": sum(c.completion_tokens for _, _, c in answered),
        "partial": partial,
        "model_label": config.model_label(),
        "eval_dataset": config.data_label,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "backend": loaded.backend,
        **loaded.describe,
    }
    write_results(out, results)
    log.info("scores: %s", {k: v for k, v in results.items() if k.startswith(("predict_", "eval_", "perp"))})
    return results
