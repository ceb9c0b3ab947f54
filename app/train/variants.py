"""LoRA variants and training tricks, with LLaMA-Factory's key names; PEFT and Transformers do the work.

    use_dora             LoraConfig(use_dora=True)
    use_rslora           LoraConfig(use_rslora=True): scale alpha / sqrt(r)
    pissa_init           LoraConfig(init_lora_weights="pissa_niter_N"); the initial adapter is kept in
                         the run folder and the final adapter is saved converted to a plain LoRA
                         (PEFT's path_initial_model_for_weight_conversion), so it applies to the
                         untouched base like any other adapter
    loraplus_lr_ratio    peft.optimizers.create_loraplus_optimizer: B matrices learn ratio x faster
    adapter_name_or_path PeftModel.from_pretrained(..., is_trainable=True): keep training an adapter
    rope_scaling         config.rope_parameters with factor ceil(cutoff_len / max_position_embeddings)
    neftune_noise_alpha  TrainingArguments(neftune_noise_alpha=...) (SFT / PT; see recipes)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from app.config import JobConfig

log = logging.getLogger(__name__)
PISSA_INIT_DIR = "pissa_init"  # inside the run folder: the adapter as PiSSA initialised it


def lora_variant_arguments(job: JobConfig) -> dict[str, Any]:
    """LoraConfig keys for DoRA, rsLoRA and PiSSA."""
    extra: dict[str, Any] = {"use_dora": job.use_dora, "use_rslora": job.use_rslora}
    if job.pissa_init:
        extra["init_lora_weights"] = "pissa" if job.pissa_iter == -1 else f"pissa_niter_{job.pissa_iter}"
    return extra


def adapter_dir(path: str | Path) -> Path:
    """An adapter folder, or a run folder's `adapter/`."""
    path = Path(path).expanduser()
    if (path / "adapter" / "adapter_config.json").is_file():
        return path / "adapter"
    if not (path / "adapter_config.json").is_file():
        raise ValueError(f"adapter_name_or_path: {path} holds no LoRA adapter (adapter_config.json)")
    return path


def peft_model(job: JobConfig, model: Any, config: Any) -> Any:
    """The trainable PEFT model: a new adapter, or the one named by adapter_name_or_path."""
    from peft import PeftModel, get_peft_model

    if job.adapter_name_or_path:
        folder = adapter_dir(job.adapter_name_or_path)
        saved = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        log.info("continuing adapter %s (rank %s, trained on %s)", folder, saved.get("r"),
                 saved.get("base_model_name_or_path"))
        return PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    model = get_peft_model(model, config)
    if job.pissa_init and job.output_dir:
        _keep_pissa_initial(model, Path(job.output_dir))
    return model


def _keep_pissa_initial(model: Any, run_dir: Path) -> None:
    """Save the PiSSA-initialised adapter, and make the final save (run/adapter) a converted plain LoRA.
    Checkpoints stay unconverted: resuming needs the PiSSA form."""
    initial = run_dir / PISSA_INIT_DIR
    config = model.peft_config["default"]
    pissa, config.init_lora_weights = config.init_lora_weights, True  # load it later as a plain adapter
    model.save_pretrained(str(initial))
    config.init_lora_weights = pissa
    final = (run_dir / "adapter").resolve()
    original = model.save_pretrained

    def save_pretrained(save_directory: str, **kwargs: Any) -> Any:
        if Path(save_directory).resolve() == final:
            kwargs.setdefault("path_initial_model_for_weight_conversion", str(initial))
        return original(save_directory, **kwargs)

    model.save_pretrained = save_pretrained


def apply_to_trainer(job: JobConfig, trainer: Any) -> None:
    """Tricks that need the built trainer: LoRA+ replaces its optimizer."""
    if job.loraplus_lr_ratio and job.finetuning_type == "lora":
        from peft.optimizers import create_loraplus_optimizer

        optimizer_cls, optimizer_kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
        optimizer_kwargs.pop("lr", None)
        trainer.optimizer = create_loraplus_optimizer(
            model=trainer.model, optimizer_cls=optimizer_cls, lr=job.learning_rate,
            loraplus_lr_ratio=job.loraplus_lr_ratio, weight_decay=job.weight_decay, **optimizer_kwargs)


def rope_arguments(job: JobConfig, model_dir: Path) -> dict[str, Any]:
    """from_pretrained keys that stretch RoPE to cutoff_len (app.models.rope: loading the adapter later
    applies the same keys)."""
    from app.models.rope import rope_arguments as stretch

    return stretch(job.rope_scaling, job.cutoff_len, model_dir)
