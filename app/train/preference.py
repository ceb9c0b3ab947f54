"""Preference training beyond DPO's own losses: ORPO, SimPO, the SFT term (pref_ftx), and KTO.

    stage: dpo, pref_loss: sigmoid | ipo | hinge   TRL's DPOTrainer (app.train.recipes), + pref_ftx as
                                                   TRL's "sft" loss weighted beside the preference loss
    stage: dpo, pref_loss: orpo                    TRL's ORPOTrainer: odds-ratio loss + NLL, no reference
    stage: dpo, pref_loss: simpo                   TRL's CPOTrainer with loss_type simpo (length-normalised,
                                                   no reference); pref_ftx is its NLL weight (cpo_alpha)
    stage: kto                                     TRL's KTOTrainer on answers tagged good / bad

ORPO and CPO live in `trl.experimental` in TRL 1.x: their configs take the same Trainer arguments.
Every trainer gets conversational rows and applies the chat template itself.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from app.config import JobConfig
from app.train.checkpoints import AtomicCheckpointMixin


def dpo_loss_arguments(job: JobConfig) -> dict[str, Any]:
    """DPOConfig's loss keys: the chosen loss, plus TRL's "sft" loss weighted by pref_ftx when set."""
    if job.pref_ftx > 0:
        return {"loss_type": [job.pref_loss, "sft"], "loss_weights": [1.0, job.pref_ftx]}
    return {"loss_type": job.pref_loss}


def _experimental(module: str, names: tuple[str, str]) -> tuple[Any, Any]:
    """A trainer and its config from trl.experimental, without its "experimental" warning in every log."""
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = importlib.import_module(f"trl.experimental.{module}")
    return getattr(found, names[0]), getattr(found, names[1])


def build_preference_trainer(job: JobConfig, model, tokenizer, data, output_dir: Path, callbacks: list):
    """`stage: dpo`: DPO's own losses through recipes.build_dpo_trainer, ORPO and SimPO here."""
    from app.train import tracking
    from app.train.recipes import _config, build_dpo_trainer, keep_trainable_fp32, trainer_arguments

    if job.pref_loss not in ("orpo", "simpo"):
        return build_dpo_trainer(job, model, tokenizer, data, output_dir, callbacks)
    common = trainer_arguments(job, output_dir, data.eval is not None) | dict(max_length=job.cutoff_len)
    if job.pref_loss == "orpo":
        trainer_cls, config_cls = _experimental("orpo", ("ORPOTrainer", "ORPOConfig"))
        args = _config(config_cls, common | dict(beta=job.pref_beta))
    else:
        trainer_cls, config_cls = _experimental("cpo", ("CPOTrainer", "CPOConfig"))
        args = _config(config_cls, common | dict(loss_type="simpo", beta=job.pref_beta, simpo_gamma=job.simpo_gamma,
                                                 cpo_alpha=job.pref_ftx))

    class StudioTrainer(AtomicCheckpointMixin, trainer_cls):
        pass

    trainer = StudioTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                            processing_class=tokenizer, callbacks=callbacks + tracking.callbacks(job, callbacks))
    keep_trainable_fp32(trainer.model)
    return trainer


def build_kto_trainer(job: JobConfig, model, tokenizer, data, output_dir: Path, callbacks: list):
    """KTO on {prompt, completion, label} rows. The reference, as for DPO: the base with the adapter
    disabled for LoRA, a frozen copy for freeze/full."""
    from trl import KTOConfig, KTOTrainer

    from app.train import tracking
    from app.train.recipes import _config, keep_trainable_fp32, trainer_arguments

    class StudioKTOTrainer(AtomicCheckpointMixin, KTOTrainer):
        pass

    args = _config(KTOConfig, trainer_arguments(job, output_dir, data.eval is not None) | dict(
        beta=job.pref_beta,
        desirable_weight=job.kto_chosen_weight,
        undesirable_weight=job.kto_rejected_weight,
        max_length=job.cutoff_len,
    ))
    trainer = StudioKTOTrainer(model=model, ref_model=None, args=args, train_dataset=data.train,
                               eval_dataset=data.eval, processing_class=tokenizer,
                               callbacks=callbacks + tracking.callbacks(job, callbacks))
    keep_trainable_fp32(trainer.model)
    if getattr(trainer, "ref_model", None) is not None:
        trainer.ref_model.requires_grad_(False)
    return trainer
