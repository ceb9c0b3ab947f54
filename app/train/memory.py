"""Estimate the memory a training job needs per device, before loading anything.

    total = weights + gradients + optimizer states + activations - backward overlap + runtime overhead
            (+ dequantization buffers for QLoRA on CPU)

Counts come from the model's config (layer shapes on the meta device, see app.models.info), so the
estimate updates instantly as the user changes settings. Assumptions, stated so they can be checked:

- Before the data is tokenized, rows are full length: a batch holds per_device_train_batch_size x
  cutoff_len tokens (the worst case). Once tokenized (`rows`), the largest batch the data can form: its
  longest rows (padded batches: each padded to the longest).
- Activations: per token and decoder layer, what autograd keeps for the backward pass of a llama-style
  block, ~(10 hidden + 3 intermediate + 4 kv) values (measured with saved-tensor hooks on SmolLM2), times
  ACTIVATION_FACTOR for the gradients of those activations and allocator slack that coexist with them.
  Only layers from the first trainable one onwards keep activations (freeze tuning of the last layers
  keeps few). The head scores label tokens only (app.train.loss_head): on CPU a frozen head of a plain
  projection works in chunks (CHUNK_HEAD_COPIES chunks of logits at a time, and one hidden-sized
  gradient per label token); any other head on CPU keeps LABEL_HEAD_COPIES fp32 vocabulary-sized
  tensors per label token; on GPU the fused head works in chunks (none whole);
  DPO's and KTO's chunked log-prob head keeps about one; a reward model's score head (one value per
  token) keeps next to nothing.
- Stages (TRL's trainers): dpo and rm put each row's chosen and rejected answers in one batch (twice
  the tokens). KTO's KL batch (each prompt with another row's answer) runs under no_grad before the
  policy's forward pass, so it is gone before the activations peak: it adds nothing. A reference model
  (dpo with sigmoid/ipo/hinge, kto) is the base with the adapter disabled for LoRA, but a frozen second
  copy of the weights for freeze and full fine-tuning (orpo and simpo have none).
- The backward pass frees a layer's activations as it creates that layer's gradients, so both never
  exist whole at once: the smaller of the two is counted at BACKWARD_OVERLAP.
- Adam keeps two fp32 states per trainable parameter (8-bit Adam: two bytes); LoRA/QLoRA/freeze
  trainable weights are fp32 (the worker upcasts them), a frozen base lives in the compute dtype.
- LoRA on CPU in fp32: the frozen linear weights are packed for oneDNN (app.train.frozen_linears): the
  packed forward and backward copies stand in for the plain weight, one more copy of those weights,
  and the output head gets a packed copy for its forward.
- QLoRA on CPU: bitsandbytes dequantizes each weight to fp32 for every matmul and the C allocator keeps
  those buffers, so resident memory grows by about the fp32 size of the quantized layers.
- Several processes: each device holds its own share. DDP keeps a second copy of the gradients
  (its buckets); ZeRO-1/2/3 (and FSDP = 3) shard optimizer states / gradients / weights over the
  world size; offload moves optimizer states (stage 3: weights too) to CPU RAM, shown but not counted.
- Runtime overhead: Python with torch, transformers, TRL and the tokenizer (CPU, measured ~0.5 GB), or
  the CUDA context and kernels (GPU).

Calibrated on CPU with `bench/memory_estimate.py` (SmolLM2-135M, batch 2 x 256 tokens: within 25% of
the measured peak RSS for LoRA, QLoRA, freeze and full). The GPU constants are the same; GPU peaks
(torch.cuda.max_memory_allocated) have not been measured against them yet.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from app.config import JobConfig
from app.models.info import ModelInfo

MB = 2**20
_LAYER_INDEX = re.compile(r"\.(\d+)\.")

ACTIVATION_FACTOR = 2.1  # saved activations -> peak: their gradients and allocator slack (measured, CPU)
LABEL_HEAD_COPIES = 3.0  # fp32 vocabulary-sized tensors per label token: logits, log-softmax, gradient (CPU)
CHUNK_HEAD_COPIES = 2.0  # the chunked CPU head: one chunk's logits and its softmax's temporaries
FUSED_HEAD_COPIES = 0.0  # GPU: TRL's fused head works in vocabulary chunks, never whole logits
DPO_HEAD_COPIES = 1.0  # TRL's DPO computes log-probs in chunks: logits are never whole
BACKWARD_OVERLAP = 0.25  # share of min(activations, gradients) that coexists with the other
OVERHEAD_MB = {"cpu": 550, "gpu": 600}
PAIRED_STAGES = ("dpo", "rm")  # a batch holds each row's chosen and rejected answer


@dataclass
class MemoryEstimate:
    weights_mb: float
    gradients_mb: float
    optimizer_mb: float
    activations_mb: float
    overhead_mb: float
    trainable_params: int
    total_params: int
    overlap_mb: float = 0.0  # subtracted: activations freed while gradients are created
    reference_mb: float = 0.0  # dpo/kto with freeze/full: the frozen reference copy of the weights
    dequant_mb: float = 0.0  # QLoRA on CPU: fp32 buffers of dequantized weights
    packed_mb: float = 0.0  # CPU LoRA: the frozen linear weights packed for oneDNN (a second copy)
    offloaded_mb: float = 0.0  # in CPU RAM instead (offload); not part of the device total
    tokens_per_step: int = 0  # per device and micro-batch: the largest batch (worst case: batch x cutoff_len)
    from_data: bool = False  # sized from the tokenized rows' lengths, not the worst case

    @property
    def total_mb(self) -> float:
        return (self.weights_mb + self.reference_mb + self.gradients_mb + self.optimizer_mb + self.activations_mb
                - self.overlap_mb + self.dequant_mb + self.packed_mb + self.overhead_mb)

    def as_dict(self) -> dict:
        return asdict(self) | {"total_mb": self.total_mb}

    def rows(self) -> list[tuple[str, float]]:
        rows = [("weights", self.weights_mb)]
        if self.reference_mb:
            rows.append(("reference model", self.reference_mb))
        rows += [("gradients", self.gradients_mb), ("optimizer", self.optimizer_mb),
                 ("activations", self.activations_mb)]
        if self.overlap_mb:
            rows.append(("freed in backward", -self.overlap_mb))
        if self.dequant_mb:
            rows.append(("dequantization buffers", self.dequant_mb))
        if self.packed_mb:
            rows.append(("packed weights (oneDNN)", self.packed_mb))
        rows.append(("runtime overhead", self.overhead_mb))
        if self.offloaded_mb:
            rows.append(("offloaded to CPU RAM (not in total)", self.offloaded_mb))
        return rows + [("total", self.total_mb)]


def lora_parameters(info: ModelInfo, job: JobConfig) -> int:
    wanted = _lora_targets(job)
    return sum(job.lora_rank * (fan_in + fan_out) for name, fan_in, fan_out in info.linear_layers
               if wanted is None or name.rsplit(".", 1)[-1] in wanted)


def _lora_targets(job: JobConfig) -> set[str] | None:
    if job.lora_target.strip().lower() == "all":
        return None
    return {t.strip() for t in job.lora_target.split(",") if t.strip()}


def freeze_layers(info: ModelInfo, job: JobConfig) -> list[int]:
    total = info.n_layers
    n = max(-total, min(total, job.freeze_trainable_layers))
    return list(range(total - n, total)) if n > 0 else list(range(-n))


def freeze_parameters(info: ModelInfo, job: JobConfig) -> int:
    chosen = set(freeze_layers(info, job))
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
        return 0.5 + (0.02 if job.double_quantization else 0.07)  # NF4 plus block scales
    if job.quantization_bit == 8:
        return 1.0 + 0.03
    if job.finetuning_type != "full" and (job.bf16 or job.fp16):
        return 2.0  # frozen base stored in the compute dtype
    return 4.0


def job_parallelism(job: JobConfig) -> tuple[int, int]:
    """(world size, ZeRO stage) from the job's own fields; fsdp shards like ZeRO-3."""
    stage = 3 if job.distributed_strategy == "fsdp" else (
        int(job.distributed_strategy[-1]) if job.distributed_strategy.startswith("deepspeed_zero") else 0)
    return (job.num_processes or 1) * job.num_machines, stage


def largest_batch(job: JobConfig, rows: list[tuple[int, int]] | None, on_gpu: bool = True,
                  model_type: str | None = None) -> tuple[int, int]:
    """(tokens, label tokens) of the largest micro-batch: from the tokenized rows' (length, labels) when
    known (the batch of the longest rows; padded batches pad to their longest), else batch x cutoff_len.
    On CPU the worker runs one row per micro-batch (app.train.batching), but DPO on the decoders whose
    prompt it computes once per pair keeps several short pairs in one (app.train.shared_prompt)."""
    from app.train import shared_prompt
    from app.train.batching import micro_batches

    batch = micro_batches(job, on_gpu)[0]
    if job.stage == "dpo" and not on_gpu and model_type in shared_prompt.FAMILIES:
        batch = shared_prompt.pairs_per_micro_batch(job)
    if not rows:
        tokens = batch * job.cutoff_len * (2 if job.stage in PAIRED_STAGES else 1)  # chosen and rejected
        return tokens, tokens
    longest = sorted(rows, reverse=True)[:batch]
    tokens = sum(n for n, _ in longest) if job.padding_free else len(longest) * longest[0][0]
    return tokens, sum(labels for _, labels in longest)


def has_reference_copy(job: JobConfig) -> bool:
    """Whether TRL keeps a second, frozen model as the reference: dpo (not orpo/simpo) and kto without LoRA."""
    if job.finetuning_type == "lora":
        return False  # the base with the adapter disabled is the reference
    return job.stage == "kto" or (job.stage == "dpo" and job.pref_loss not in ("orpo", "simpo"))


def head_bytes(info: ModelInfo, job: JobConfig, on_gpu: bool, labels: int, world_size: int = 1) -> float:
    """Peak memory of the loss head for a batch of `labels` label tokens."""
    if job.stage == "rm":
        return 0.0  # the score head: one value per token, no vocabulary-sized logits
    if job.stage in ("dpo", "kto"):
        return labels * info.vocab_size * 4.0 * DPO_HEAD_COPIES
    if on_gpu:
        return labels * info.vocab_size * 4.0 * FUSED_HEAD_COPIES
    from app.train import loss_head  # torch: loaded only once an estimate is asked for

    if loss_head.planned_head_reason(info.model_type, job.finetuning_type == "full", world_size) is None:
        return (min(labels, loss_head.chunk_rows(info.vocab_size)) * info.vocab_size * 4.0 * CHUNK_HEAD_COPIES
                + labels * info.hidden_size * 4.0)  # the hidden states' gradient, made in the forward pass
    return labels * info.vocab_size * 4.0 * LABEL_HEAD_COPIES


# A linear layer whose weight is frozen keeps no copy of its input for the backward pass; layers that
# read the same tensor (q, k, v; gate, up) share one copy. Inputs per token of each group:
LINEAR_INPUT_GROUPS = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "o_proj": "attn_out",
                       "gate_proj": "mlp_in", "up_proj": "mlp_in", "down_proj": "mlp_mid"}


def untrained_linear_inputs(info: ModelInfo, job: JobConfig) -> int:
    """Values per token and layer that LoRA on only some linear layers does not keep (0 otherwise)."""
    wanted = _lora_targets(job) if job.finetuning_type == "lora" else None
    if wanted is None:
        return 0
    sizes = {"attn_in": info.hidden_size, "attn_out": info.hidden_size, "mlp_in": info.hidden_size,
             "mlp_mid": info.intermediate_size}
    kept = {group for name, group in LINEAR_INPUT_GROUPS.items() if name in wanted}
    return sum(size for group, size in sizes.items() if group not in kept)


def activation_bytes_per_token(info: ModelInfo, job: JobConfig) -> float:
    """Peak activation memory per token of the decoder layers (the head is counted per label token)."""
    act_bytes = 2.0 if (job.bf16 or job.fp16) else 4.0
    kv = info.hidden_size * info.n_kv_heads // max(info.n_heads, 1)
    values = 10 * info.hidden_size + 3 * info.intermediate_size + 4 * kv  # every linear layer trained
    values -= untrained_linear_inputs(info, job)
    per_layer = values * act_bytes * ACTIVATION_FACTOR
    if job.finetuning_type == "freeze":
        graph_layers = info.n_layers - min(freeze_layers(info, job))  # from the first trainable layer on
    else:
        graph_layers = info.n_layers
    if job.gradient_checkpointing:
        # each layer keeps its input; one layer at a time is recomputed with its full activations
        layers = graph_layers * info.hidden_size * act_bytes + per_layer
    else:
        layers = graph_layers * per_layer
    return layers


def estimate_memory(info: ModelInfo, job: JobConfig, on_gpu: bool, world_size: int | None = None,
                    zero_stage: int | None = None, rows: list[tuple[int, int]] | None = None) -> MemoryEstimate:
    """Peak memory per device (GPU memory, or process RSS on CPU). world_size / zero_stage default to
    what the job asks for (num_processes, distributed_strategy). `rows`: (tokens, label tokens) of each
    tokenized training row, once known; without them every row is taken as cutoff_len long."""
    if job.bf16 is None:  # automatic: bf16 on a GPU (assumed Ampere or newer), fp32 on CPU
        job = job.replace(bf16=on_gpu and not job.fp16)
    job_world, job_stage = job_parallelism(job)
    world_size = job_world if world_size is None else world_size
    zero_stage = job_stage if zero_stage is None else zero_stage

    trainable = trainable_parameters(info, job)
    linear = sum(i * o for _, i, o in info.linear_layers)
    other = max(info.n_params - linear, 0)  # embeddings, norms: never quantized
    frozen_low_precision = (job.bf16 or job.fp16) and job.finetuning_type != "full"
    weights = linear * _weight_bytes(job) + other * (2.0 if frozen_low_precision else 4.0)
    reference = weights if has_reference_copy(job) else 0.0  # the frozen base, as loaded
    if job.finetuning_type == "lora":
        weights += trainable * 4.0  # the adapters themselves, fp32
    gradients = trainable * 4.0
    optimizer = trainable * (2.0 if "8bit" in job.optim else 0.0 if job.optim == "sgd" else 8.0)
    if world_size > 1 and zero_stage == 0 and job.distributed_strategy != "none":
        gradients *= 2  # DDP's gradient buckets: a second copy
    if zero_stage >= 1:
        optimizer /= world_size
    if zero_stage >= 2:
        gradients /= world_size
    if zero_stage >= 3:
        weights /= world_size
        reference /= world_size
    offloaded = 0.0
    if job.offload and zero_stage >= 1:
        offloaded, optimizer = optimizer, 0.0
        if zero_stage >= 3:
            offloaded, weights, reference = offloaded + weights + reference, 0.0, 0.0

    from app.train import frozen_linears  # torch: loaded only once an estimate is asked for

    tokens, labels = largest_batch(job, rows, on_gpu, info.model_type)
    activations = tokens * activation_bytes_per_token(info, job) + head_bytes(info, job, on_gpu, labels, world_size)
    overlap = (1 - BACKWARD_OVERLAP) * min(activations, gradients)
    dequant = linear * 4.0 if job.quantization_bit is not None and not on_gpu else 0.0
    head = info.vocab_size * info.hidden_size  # the output head, packed for its forward (its weight kept)
    packed = (linear + head) * 4.0 if frozen_linears.job_reason(job, on_gpu, world_size) is None else 0.0
    overhead = OVERHEAD_MB["gpu" if on_gpu else "cpu"] * MB
    return MemoryEstimate(
        weights_mb=weights / MB, reference_mb=reference / MB, gradients_mb=gradients / MB, optimizer_mb=optimizer / MB,
        activations_mb=activations / MB, overhead_mb=overhead / MB, overlap_mb=overlap / MB,
        dequant_mb=dequant / MB, packed_mb=packed / MB, offloaded_mb=offloaded / MB, tokens_per_step=tokens,
        from_data=bool(rows), trainable_params=trainable, total_params=info.n_params,
    )
