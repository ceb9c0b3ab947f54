"""Estimate the memory a training job needs, before loading anything.

    total = weights + gradients + optimizer states + activations + runtime overhead

Counts come from the model's config (layer shapes on the meta device, see app.models.info), so the
estimate updates instantly as the user changes settings. `bench/memory_estimate.py` compares it
with measured peaks.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from app.config import JobConfig
from app.models.info import ModelInfo

MB = 2**20
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


@dataclass
class MemoryEstimate:
    weights_mb: float
    gradients_mb: float
    optimizer_mb: float
    activations_mb: float
    overhead_mb: float
    trainable_params: int
    total_params: int

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.gradients_mb + self.optimizer_mb + self.activations_mb + self.overhead_mb

    def as_dict(self) -> dict:
        return asdict(self) | {"total_mb": self.total_mb}

    def rows(self) -> list[tuple[str, float]]:
        return [("weights", self.weights_mb), ("gradients", self.gradients_mb), ("optimizer", self.optimizer_mb),
                ("activations", self.activations_mb), ("runtime overhead", self.overhead_mb),
                ("total", self.total_mb)]


def lora_parameters(info: ModelInfo, job: JobConfig) -> int:
    wanted = None if job.lora_target.strip().lower() == "all" else {
        t.strip() for t in job.lora_target.split(",") if t.strip()}
    return sum(job.lora_rank * (fan_in + fan_out) for name, fan_in, fan_out in info.linear_layers
               if wanted is None or name.rsplit(".", 1)[-1] in wanted)


def freeze_parameters(info: ModelInfo, job: JobConfig) -> int:
    total = info.n_layers
    n = job.freeze_trainable_layers
    chosen = set(range(total - n, total)) if n > 0 else set(range(-n))
    wanted = None if job.freeze_trainable_modules.strip().lower() == "all" else [
        m.strip() for m in job.freeze_trainable_modules.split(",") if m.strip()]
    count = 0
    for name, fan_in, fan_out in info.linear_layers:
        match = _LAYER_INDEX.search(name)
        if match and int(match.group(1)) in chosen and (wanted is None or any(w in name.split(".") for w in wanted)):
            count += fan_in * fan_out
    return count


def trainable_parameters(info: ModelInfo, job: JobConfig) -> int:
    if job.finetuning_type == "lora":
        return lora_parameters(info, job)
    if job.finetuning_type == "freeze":
        return freeze_parameters(info, job)
    return info.n_params


def _weight_bytes(job: JobConfig) -> float:
    if job.quantization_bit == 4:
        return 0.5 + 0.07  # NF4 plus block scales (less with double quantization)
    if job.quantization_bit == 8:
        return 1.0 + 0.03
    if job.finetuning_type != "full" and (job.bf16 or job.fp16):
        return 2.0  # frozen base stored in the compute dtype
    return 4.0


def estimate_memory(info: ModelInfo, job: JobConfig, on_gpu: bool, world_size: int = 1,
                    zero_stage: int = 0) -> MemoryEstimate:
    trainable = trainable_parameters(info, job)
    linear = sum(i * o for _, i, o in info.linear_layers)
    other = max(info.n_params - linear, 0)  # embeddings, norms: never quantized
    weights = linear * _weight_bytes(job) + other * (2.0 if (job.bf16 or job.fp16) and job.finetuning_type != "full"
                                                   else 4.0)
    gradients = trainable * 4.0
    optimizer = trainable * (2.0 if "8bit" in job.optim else 0.0 if job.optim == "sgd" else 8.0)
    if zero_stage >= 1:
        optimizer /= world_size
    if zero_stage >= 2:
        gradients /= world_size
    if zero_stage >= 3:
        weights /= world_size

    tokens = job.per_device_train_batch_size * job.cutoff_len
    act_bytes = 2.0 if (job.bf16 or job.fp16) else 4.0
    # Per layer and token a llama block keeps ~ 10 hidden-sized and 3 intermediate-sized tensors for
    # the backward pass (attention through SDPA keeps no seq x seq matrix).
    per_layer = (10 * info.hidden_size + 3 * info.intermediate_size) * act_bytes
    if job.gradient_checkpointing:
        layers = info.n_layers * info.hidden_size * act_bytes + per_layer  # inputs, plus one layer recomputed
    else:
        layers = info.n_layers * per_layer
    logits = info.vocab_size * 4.0 * 2  # fp32 logits and their gradient (chunked by TRL's fused head: upper bound)
    activations = tokens * (layers + logits)
    if job.stage == "dpo":
        activations *= 2  # chosen and rejected in one batch (the reference pass keeps no graph)
    overhead = (500 if on_gpu else 700) * MB  # CUDA context / Python, torch and tokenizer
    return MemoryEstimate(
        weights_mb=weights / MB, gradients_mb=gradients / MB, optimizer_mb=optimizer / MB,
        activations_mb=activations / MB, overhead_mb=overhead / MB,
        trainable_params=trainable, total_params=info.n_params,
    )
