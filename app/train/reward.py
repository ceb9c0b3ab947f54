"""`stage: rm`: a reward model on preference pairs (TRL's RewardTrainer), and loading one back.

The model is the base as a sequence classifier with one output (a fresh `score` head), trained so the
chosen answer scores above the rejected one. With LoRA the adapter saves the head too (PEFT keeps
`score` trainable and saved for SEQ_CLS adapters), so the run folder alone is a usable reward model:
GRPO's `reward_model` reward loads it with `load_reward_model`. Logged per step: accuracy (share of
pairs ranked right, the curve to watch), margin, min/mean/max reward.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.config import JobConfig
from app.train.checkpoints import AtomicCheckpointMixin


def build_reward_trainer(job: JobConfig, model, tokenizer, data, output_dir: Path, callbacks: list):
    from trl import RewardConfig, RewardTrainer

    from app.train import tracking
    from app.train.recipes import _config, keep_trainable_fp32, trainer_arguments

    class StudioRewardTrainer(AtomicCheckpointMixin, RewardTrainer):
        pass

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.config.pad_token_id = tokenizer.pad_token_id  # the head reads each row's last non-pad token
    args = _config(RewardConfig, trainer_arguments(job, output_dir, data.eval is not None) | dict(
        max_length=job.cutoff_len,
    ))
    trainer = StudioRewardTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                                  processing_class=tokenizer, callbacks=callbacks + tracking.callbacks(job, callbacks))
    keep_trainable_fp32(trainer.model)
    return trainer


def reward_model_dir(path: str | Path) -> Path:
    """The folder holding the reward model of a run folder (runs/x/adapter) or a model/adapter folder."""
    path = Path(path).expanduser()
    if (path / "adapter").is_dir():
        path = path / "adapter"
    if not ((path / "adapter_config.json").is_file() or (path / "config.json").is_file()):
        raise ValueError(f"reward_model: {path} holds neither a reward model nor an rm run's adapter")
    return path


def load_reward_model(path: str | Path, dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a reward model: an rm run folder, its adapter, or a full classifier folder."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = reward_model_dir(path)
    dtype = dtype or torch.float32
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        if config.get("task_type") != "SEQ_CLS":
            raise ValueError(f"reward_model: the adapter in {folder} is a {config.get('task_type')} adapter, not a "
                             "reward model (train one with stage: rm)")
        from app.models.rope import base_arguments_for

        base_dir = config["base_model_name_or_path"]
        base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1, dtype=dtype,
                                                                   **base_arguments_for(folder, base_dir))
        model = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer
