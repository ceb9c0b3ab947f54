"""A trainer callback that turns the Trainer's progress into run-folder events, and obeys Stop.

Event schema (events.jsonl; every line also has "t" and "kind"; new keys may appear, none is renamed):

    stage       name (validating | launching | loading_model | tokenizing | memory | model_ready | training |
                saving),
                message; optional: level ("warning"), rows, trainable_params, total_params, device,
                world_size, strategy, resumed_from, estimate_mb and gradient_checkpointing (memory)
    log         step, total_steps, epoch, loss, lr, grad_norm, tokens_per_s (real, non-padding tokens
                per second over all processes, since the previous log), tokens (real tokens trained so
                far), eta_s, mem_mb (this process: peak GPU memory, or RSS on CPU);
                final: true on the Trainer's closing summary (train_loss, no loss).
                Extra numbers a trainer reports ride along, "/" turned into "_":
                  SFT / PT: none (the entropy and token accuracy TRL computes each step are skipped)
                  DPO:      rewards_chosen, rewards_rejected (beta x policy-minus-reference log-prob of the
                            chosen / rejected answer), rewards_margins (chosen - rejected),
                            rewards_accuracies (share of pairs with chosen > rejected), logps_chosen,
                            logps_rejected (entropy, token accuracy and mean logits are not computed)
                  ORPO:     + log_odds_ratio, log_odds_chosen, nll_loss; SimPO: + nll_loss
                  KTO:      kl, rewards_chosen / rewards_rejected / rewards_margins (when both kinds are in a batch)
                  rm:       accuracy (pairs ranked right), margin, min_reward, mean_reward, max_reward
                  GRPO:     reward, reward_std, rewards_<function>_mean / _std, kl, completions_mean_length
                            (and min / max / clipped_ratio), entropy, clip_ratio_*
    eval        step, eval_loss (+ every other eval_* number, "/" turned into "_": eval_rewards_margins,
                eval_rewards_accuracies, eval_logps_chosen, ... for DPO). With val_size, a first eval runs
                at step 0: the baseline of the eval curve.
    checkpoint  step, path
    done        state (finished | stopped | failed), error
"""

from __future__ import annotations

import os
import time

import psutil
import torch
from transformers import TrainerCallback

from app.train.lifecycle import StopFlag
from app.train.runfolder import EventLog


def memory_mb() -> int:
    """Peak accelerator memory on GPU, this process's resident memory on CPU."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated() // 2**20)
    return int(psutil.Process(os.getpid()).memory_info().rss // 2**20)


class EventCallback(TrainerCallback):
    """Writes `log`, `eval` and `checkpoint` events; on Stop, saves a checkpoint and ends training."""

    def __init__(self, events: EventLog, stop: StopFlag, is_writer: bool = True):
        self.events = events
        self.stop = stop
        self.is_writer = is_writer  # only rank 0 writes in multi-process runs
        self.started = time.time()
        self.first_step: int | None = None
        self.first_step_time = 0.0
        self.last_tokens: float | None = None
        self.last_time = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.last_time = time.time()
        self.first_step = state.global_step  # > 0 when resuming
        self.first_step_time = self.started

    def on_step_end(self, args, state, control, **kwargs):
        requested = self.stop.requested
        if args.world_size > 1:  # every rank stops after the same step, or the collectives deadlock
            from app.train.distributed import any_rank

            requested = any_rank(requested, args.device)
            self.stop.requested = requested
        if requested:
            control.should_save = True
            control.should_training_stop = True
        if control.should_save:  # a checkpoint follows: a Stop must wait for it, not kill it mid-write
            self.stop.saving(f"checkpoint-{state.global_step}")
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.is_writer or not logs:
            return
        if any(key.startswith("eval_") for key in logs):
            return  # on_evaluate reports those
        now = time.time()
        step = state.global_step
        done_steps = step - (self.first_step or 0)
        per_step = (now - self.first_step_time) / done_steps if done_steps > 0 else None
        eta = per_step * max(state.max_steps - step, 0) if per_step else None
        tokens = logs.get("num_tokens")
        tokens_per_s = None
        if tokens is not None and self.last_tokens is not None and now > self.last_time:
            tokens_per_s = (float(tokens) - self.last_tokens) / (now - self.last_time)
        if tokens is not None:
            self.last_tokens, self.last_time = float(tokens), now
        event = {
            "step": step,
            "total_steps": state.max_steps,
            "epoch": round(float(state.epoch or 0), 4),
            "loss": logs.get("loss"),
            "lr": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s is not None else None,
            "tokens": int(float(tokens)) if tokens is not None else None,
            "eta_s": round(eta, 1) if eta is not None else None,
            "mem_mb": memory_mb(),
        }
        # Extra numbers a trainer reports (DPO rewards and margins, token accuracy) ride along.
        for key, value in logs.items():
            if key not in ("loss", "learning_rate", "grad_norm", "epoch", "num_tokens") and isinstance(
                value, (int, float)
            ):
                event.setdefault(key.replace("/", "_"), value)
        if "train_loss" in logs and "loss" not in logs:
            event["final"] = True  # the Trainer's closing summary (average train_loss), not a step
        self.events.append("log", **event)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.is_writer and metrics and "eval_loss" in metrics:
            extra = {k.replace("/", "_"): v for k, v in metrics.items()
                     if k.startswith("eval_") and isinstance(v, (int, float))}
            self.events.append("eval", step=state.global_step, **extra)

    def on_save(self, args, state, control, **kwargs):
        self.stop.saving(None)
        if self.is_writer:
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            self.events.append("checkpoint", step=state.global_step, path=path)
