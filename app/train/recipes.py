"""Training recipes: one function per stage, each reading top to bottom.

Batching lives in `trainer_arguments` (padding-free, flattened batches with per-sequence
position ids, so no compute is spent on padding and tokens/s counts real tokens).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset

from app.config import JobConfig
from app.train import tracking
from app.train.checkpoints import AtomicCheckpointMixin
from app.train.grpo import build_grpo_trainer
from app.train.preference import build_kto_trainer, build_preference_trainer, dpo_loss_arguments
from app.train.reward import build_reward_trainer

log = logging.getLogger(__name__)


# Stages whose rows go to the trainer as they are (what the "tokenizing" stage event calls them).
ROW_STAGES = {"dpo": "preference rows", "rm": "preference rows", "kto": "tagged answers", "grpo": "prompts"}


@dataclass
class Prepared:
    train: Dataset
    eval: Dataset | None
    n_rows: int
    message: str  # for the "tokenizing" stage event


def split_eval(rows: list[dict], job: JobConfig) -> tuple[Dataset, Dataset | None]:
    dataset = Dataset.from_list(rows)
    if not job.val_size:
        return dataset, None
    size = int(job.val_size) if job.val_size >= 1 else job.val_size
    if (isinstance(size, int) and size >= len(dataset)) or len(dataset) < 2:
        raise ValueError(f"val_size: {job.val_size:g} leaves no training rows out of {len(dataset)}")
    parts = dataset.train_test_split(test_size=size, seed=job.seed)
    return parts["train"], parts["test"]


def prepare_data(job: JobConfig, tokenizer, use_cache: bool = True) -> Prepared:
    """Load every dataset of the job, render it through the chat template, tokenize and split.

    The tokenized rows are reused from the previous run of the same data, tokenizer and settings
    (app.train.data_cache); the examples are parsed once per process."""
    from app.data.render import tokenize_pt, tokenize_sft
    from app.train.data_cache import Cached, TokenCache, examples_for, fingerprint

    if (separate := tracking.with_eval_dataset(job, tokenizer, prepare_data)) is not None:
        return separate
    if job.stage in ROW_STAGES:  # conversational rows; the TRL trainer applies the chat template
        examples = examples_for(job)
        train, evaluation = split_eval(examples, job)
        return Prepared(train, evaluation, len(examples), f"{len(examples):,} {ROW_STAGES[job.stage]}")
    cache = TokenCache() if use_cache else None
    key = fingerprint(job, tokenizer) if cache else ""
    hit = cache.load(key) if cache else None
    if hit is not None:
        return Prepared(hit.train, hit.eval, hit.n_rows, hit.message + " (tokenized rows reused from cache)")
    examples = examples_for(job)
    if job.stage == "pt":
        rows, stats = tokenize_pt(examples, tokenizer, job.cutoff_len)
        message = f"{len(examples):,} texts packed into {len(rows):,} blocks of {job.cutoff_len} tokens"
    else:
        rows, stats = tokenize_sft(examples, tokenizer, job.cutoff_len)
        message = (f"{len(examples):,} rows, {stats.n_tokens:,} tokens; {stats.n_truncated} truncated to "
                   f"{job.cutoff_len} tokens, {stats.n_dropped} dropped")
    if not rows:
        raise ValueError(f"dataset: nothing left to train on after tokenizing ({message})")
    train, evaluation = split_eval(rows, job)
    if cache:
        cache.store(key, Cached(train, evaluation, len(examples), message))
    return Prepared(train, evaluation, len(examples), message)


def row_lengths(data: Prepared) -> list[int]:
    """Token count of every training row (SFT / pre-training), for the memory estimate."""
    if "input_ids" not in data.train.column_names:
        return []
    return [len(ids) for ids in data.train["input_ids"]]


def trainer_arguments(job: JobConfig, output_dir: Path, has_eval: bool) -> dict:
    """Arguments shared by every TRL trainer config, from the job."""
    from app.train import distributed
    from app.train.batching import micro_batches

    on_gpu = torch.cuda.is_available()
    micro, accumulation = micro_batches(job, on_gpu)  # the same update, one row at a time on CPU
    eval_steps = job.eval_steps or job.save_steps
    extra: dict = {}
    if distributed.world_size() > 1 or job.distributed_strategy in ("fsdp", "deepspeed_zero2", "deepspeed_zero3"):
        plan = distributed.plan_for(job)
        extra = distributed.fsdp_arguments(job, plan)
        ds_file = distributed.deepspeed_file(job, output_dir.parent)
        if plan.strategy == "deepspeed" and ds_file is not None:
            extra["deepspeed"] = str(ds_file)
        if plan.strategy == "fsdp" and not on_gpu:
            distributed.force_fsdp_on_cpu()
        extra["ddp_find_unused_parameters"] = False  # every trainable weight takes part in each step
    return extra | dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=micro,
        per_device_eval_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        learning_rate=job.learning_rate,
        num_train_epochs=job.num_train_epochs,
        max_steps=job.max_steps,
        lr_scheduler_type=job.lr_scheduler_type,
        warmup_steps=job.warmup_steps if job.warmup_steps > 0 else job.warmup_ratio,
        max_grad_norm=job.max_grad_norm if job.max_grad_norm > 0 else None,
        weight_decay=job.weight_decay,
        optim=job.optim,
        bf16=job.bf16,
        fp16=job.fp16,
        use_cpu=not on_gpu,
        gradient_checkpointing=False,  # applied by model_setup, before PEFT wrapping
        logging_steps=job.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=job.save_steps,
        save_total_limit=job.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps if has_eval else None,
        eval_on_start=has_eval,  # a baseline point for the eval curve
        seed=job.seed,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        torch_compile=job.torch_compile,
        neftune_noise_alpha=job.neftune_noise_alpha if job.stage in ("sft", "pt") else None,
    ) | tracking.trainer_arguments(job, output_dir, has_eval)


def data_passes(job: JobConfig, n_rows: int) -> float:
    """How many times training goes over the training rows (epochs, or what max_steps amounts to)."""
    if job.max_steps > 0:
        from app.train import distributed

        rows = job.max_steps * job.per_device_train_batch_size * job.gradient_accumulation_steps
        return rows * distributed.world_size() / max(n_rows, 1)
    return job.num_train_epochs


def _config(cls, kwargs: dict):
    """Build a TRL config, dropping keys this TRL version does not know (logged, not silent)."""
    known = set(inspect.signature(cls).parameters)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        log.warning("%s does not accept %s; ignored", cls.__name__, unknown)
    return cls(**{k: v for k, v in kwargs.items() if k in known})


def keep_trainable_fp32(model) -> None:
    """TRL casts QLoRA adapters to bf16 weights (no fp32 master copy); put them back in fp32, as
    LLaMA-Factory does, so small Adam updates are not rounded away. Runs before the optimizer exists."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def build_sft_trainer(job: JobConfig, model, tokenizer, data: Prepared, output_dir: Path, callbacks: list):
    """SFT and continued pre-training: the rows are already tokenized (input_ids, completion_mask)."""
    from trl import SFTConfig, SFTTrainer

    from app.train.fast_trainers import FastSFTMixin

    class StudioSFTTrainer(AtomicCheckpointMixin, FastSFTMixin, SFTTrainer):
        pass

    args = _config(SFTConfig, trainer_arguments(job, output_dir, data.eval is not None) | dict(
        max_length=None,  # rows are truncated to cutoff_len by app.data.render
        padding_free=job.padding_free,  # flattened batches, sequence boundaries kept by position_ids
        completion_only_loss=job.stage == "sft",
        packing=False,
    ))
    trainer = StudioSFTTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                               processing_class=tokenizer, callbacks=callbacks + tracking.callbacks(job, callbacks))
    keep_trainable_fp32(trainer.model)
    return trainer


def build_dpo_trainer(job: JobConfig, model, tokenizer, data: Prepared, output_dir: Path, callbacks: list):
    """DPO on conversational preference rows. The reference: with LoRA/QLoRA the base with the adapter
    disabled (ref_model=None, no second copy); with freeze/full, TRL loads a frozen copy of the base."""
    from trl import DPOConfig, DPOTrainer

    from app.train import shared_prompt
    from app.train.fast_trainers import FastDPOMixin

    class StudioDPOTrainer(AtomicCheckpointMixin, FastDPOMixin, DPOTrainer):
        pass

    common = shared_prompt.micro_batch_arguments(job, model, trainer_arguments(job, output_dir, data.eval is not None))
    args = _config(DPOConfig, common | dict(
        beta=job.pref_beta,
        max_length=job.cutoff_len,
        # The reference (the frozen base) scores each pair once, before training, when training sees the
        # pairs more than once: later passes then skip the reference forward pass.
        precompute_ref_log_probs=job.finetuning_type == "lora" and data_passes(job, len(data.train)) > 1.0,
        **dpo_loss_arguments(job),
    ))
    trainer = StudioDPOTrainer(model=model, ref_model=None, args=args, train_dataset=data.train,
                               eval_dataset=data.eval, processing_class=tokenizer,
                               callbacks=callbacks + tracking.callbacks(job, callbacks))
    keep_trainable_fp32(trainer.model)
    if trainer.ref_model is not None:  # TRL runs it under no_grad; frozen makes that a guarantee
        trainer.ref_model.requires_grad_(False)
    return trainer


BUILDERS = {"sft": build_sft_trainer, "pt": build_sft_trainer, "dpo": build_preference_trainer}
BUILDERS["kto"] = build_kto_trainer
BUILDERS["rm"] = build_reward_trainer
BUILDERS["grpo"] = build_grpo_trainer
