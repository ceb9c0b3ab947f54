"""What one cycle submits and decides: the candidate's training job, the two evaluations, the verdict.

The candidate trains from the served adapter (PEFT keeps training it: `adapter_name_or_path`), or a new
LoRA adapter when the base model alone is served; the rest of the served run's job (template, cutoff,
LoRA layout) carries over. Both evaluations use the same held-out rows, generation settings and base, so
their scores compare; the served adapter's evaluation is reused when the history already holds one made
with the same settings.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from app.chat.adapters import AdapterError, resolve_adapter
from app.config import EvalConfig, JobConfig
from app.config.loop import LOOP_METRICS, LoopPolicy
from app.loop.history import LoopError, Version
from app.train.runfolder import RunFolder

SAVE_STEPS = 1000  # candidates are short: a checkpoint only at the end


def served_job(version: Version) -> tuple[JobConfig | None, str | None]:
    """The training job behind a served version (None for the base or a bare adapter folder), and the
    LoRA adapter folder to keep training (None for the base). Full fine-tuned models cannot be continued."""
    if not version.adapter:
        return None, None
    try:
        source = resolve_adapter(version.adapter)
    except AdapterError as exc:
        raise LoopError(f"Version {version.number}: {exc}") from None
    if source.kind != "lora":
        raise LoopError(f"Version {version.number} ({version.adapter}) is a full fine-tuned model: the loop trains "
                        "LoRA adapters; serve a LoRA run or the base model as version 0.")
    job = None
    if source.run is not None:
        try:
            job = RunFolder(source.run).job()
        except Exception:  # noqa: BLE001 - a job.yaml from another schema: the policy's settings still apply
            job = None
    return (job if isinstance(job, JobConfig) else None), str(source.path)


def base_model(policy: LoopPolicy, start: Version) -> str | None:
    """The base every version runs on: the policy's, else the one version 0 was trained on."""
    if policy.model_name_or_path:
        return policy.model_name_or_path
    job, _ = served_job(start)
    return job.model_name_or_path if job else None


def training_job(policy: LoopPolicy, served: Version, base: str | None, dataset: str, out: Path) -> JobConfig:
    job, adapter = served_job(served)
    keep = job.to_dict() if job else {}
    for key in ("finetuning_type", "quantization_bit", "distributed_strategy", "num_processes", "deepspeed"):
        keep.pop(key, None)  # a candidate is a LoRA adapter trained in one process
    changes: dict[str, Any] = {
        "stage": policy.method, "finetuning_type": "lora", "dataset": dataset, "dataset_dir": policy.dataset_dir,
        "model_name_or_path": base, "template": policy.template or keep.get("template"),
        "adapter_name_or_path": adapter, "learning_rate": policy.learning_rate,
        "num_train_epochs": policy.num_train_epochs, "max_steps": policy.max_steps,
        "per_device_train_batch_size": policy.per_device_train_batch_size, "gradient_accumulation_steps": 1,
        "lora_rank": keep.get("lora_rank", policy.lora_rank) if adapter else policy.lora_rank,
        "lora_alpha": keep.get("lora_alpha") if adapter else None, "pref_beta": policy.pref_beta,
        "val_size": 0.0, "eval_dataset": None, "max_samples": None, "early_stopping_steps": None,
        "load_best_model_at_end": False, "resume_from_checkpoint": None, "report_to": None,
        "save_steps": SAVE_STEPS, "save_total_limit": 1, "output_dir": str(out),
    }
    if policy.method == "dpo":
        changes["pref_loss"] = "sigmoid"
    return JobConfig.from_dict({k: v for k, v in keep.items() if k in JobConfig.spec()} | changes)


def eval_config(policy: LoopPolicy, base: str | None, adapter: str | None, out: Path) -> EvalConfig:
    return EvalConfig.from_dict({
        "model_name_or_path": base, "adapter_name_or_path": adapter, "template": policy.template,
        "eval_dataset": policy.eval_dataset, "dataset_dir": policy.dataset_dir,
        "max_samples": policy.eval_max_samples, "max_new_tokens": policy.eval_max_new_tokens,
        "temperature": 0.0, "output_dir": str(out)})


def eval_key(config: EvalConfig) -> str:
    """What makes two evaluations comparable: everything but where the results go."""
    data = config.to_dict() | {"output_dir": None}
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def scores_of(results: dict[str, Any]) -> dict[str, float]:
    return {k: float(results[k]) for k in LOOP_METRICS if isinstance(results.get(k), (int, float))}


def decide(policy: LoopPolicy, candidate: dict[str, float], served: dict[str, float]) -> tuple[bool, str]:
    """Promote when the candidate's metric is not worse than the served one's by more than the tolerance."""
    metric = policy.metric
    if metric not in candidate or metric not in served:
        return False, f"{metric} is missing from the evaluation results: not promoted"
    mine, theirs = candidate[metric], served[metric]
    gain = mine - theirs if policy.higher_is_better else theirs - mine  # > 0: the candidate is better
    promoted = gain >= -policy.tolerance - 1e-9
    direction = "higher" if policy.higher_is_better else "lower"
    return promoted, (f"{metric} {mine:.4g} vs {theirs:.4g} served ({direction} is better; "
                      f"{'+' if gain >= 0 else ''}{gain:.4g}, tolerance {policy.tolerance:g}): "
                      f"{'promoted' if promoted else 'not promoted'}")
