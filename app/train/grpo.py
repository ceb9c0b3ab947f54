"""`stage: grpo`: Group Relative Policy Optimization with TRL's GRPOTrainer.

For each prompt the policy samples `num_generations` completions, the reward functions
(app.train.rewards, chosen by `reward_funcs`) score them, and each completion is pushed up or down by
how it compares with its group. `grpo_beta` > 0 adds a KL penalty towards the starting model (with
LoRA: the base with the adapter disabled, no second copy). Logged per step (and plotted): reward,
reward_std, each reward's mean (rewards_<name>_mean), kl, completions_mean_length, entropy.
"""

from __future__ import annotations

from pathlib import Path

from app.config import JobConfig
from app.train.checkpoints import AtomicCheckpointMixin


def check_batch(job: JobConfig) -> None:
    """GRPO compares completions in groups: every generation batch must hold whole groups."""
    batch = job.per_device_train_batch_size * job.gradient_accumulation_steps
    if batch % job.num_generations:
        raise ValueError(
            f"num_generations: per_device_train_batch_size x gradient_accumulation_steps ({batch}) must be a "
            f"multiple of num_generations ({job.num_generations})")


def build_grpo_trainer(job: JobConfig, model, tokenizer, data, output_dir: Path, callbacks: list):
    from trl import GRPOConfig, GRPOTrainer

    from app.train.recipes import _config, keep_trainable_fp32, trainer_arguments
    from app.train.rewards import build_rewards, reward_weights

    check_batch(job)

    class StudioGRPOTrainer(AtomicCheckpointMixin, GRPOTrainer):
        pass

    funcs, processors = build_rewards(job)
    args = _config(GRPOConfig, trainer_arguments(job, output_dir, data.eval is not None) | dict(
        num_generations=job.num_generations,
        max_completion_length=job.max_completion_length,
        temperature=job.generation_temperature,
        beta=job.grpo_beta,
        reward_weights=reward_weights(job),
        per_device_eval_batch_size=job.num_generations,
        chat_template_kwargs={"enable_thinking": job.enable_thinking},
        log_completions=False,
    ))
    if tokenizer.padding_side != "left":  # generation pads prompts on the left
        tokenizer.padding_side = "left"
    trainer = StudioGRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=data.train,
                                eval_dataset=data.eval, processing_class=tokenizer,
                                reward_processing_classes=processors, callbacks=callbacks)
    keep_trainable_fp32(trainer.model)
    return trainer
