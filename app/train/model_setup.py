"""Load a base model and make the right part of it trainable: LoRA, QLoRA, freeze or full."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from app.config import JobConfig
from app.train.variants import lora_variant_arguments, peft_model, rope_arguments

log = logging.getLogger(__name__)


def compute_dtype(job: JobConfig) -> torch.dtype:
    if job.bf16:
        return torch.bfloat16
    if job.fp16:
        return torch.float16
    return torch.float32


def load_tokenizer(model_dir: Path, template: str | None, enable_thinking: bool = True):
    from app.data.render import resolve_template

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    resolve_template(tokenizer, template, enable_thinking)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


QLORA_CPU_WARNING = ("quantization_bit={bits} on CPU: bitsandbytes runs it without fused kernels (several "
                     "times slower than LoRA on the unquantized model); QLoRA pays off on a CUDA GPU")


def quantized_compute_dtype(job: JobConfig) -> torch.dtype:
    """The dtype 4-bit weights are dequantized to for each matmul: bf16 on CUDA (fp16 when asked, or
    when the GPU lacks bf16), float32 on CPU unless the job asks for bf16."""
    if job.fp16:
        return torch.float16
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if job.bf16 else torch.float32


def quantization_config(job: JobConfig):
    """NF4 (or FP4) with double quantization for 4 bits, LLM.int8 for 8 bits; None without quantization."""
    if job.quantization_bit is None:
        return None
    from transformers import BitsAndBytesConfig

    if job.quantization_bit == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=job.quantization_type,
            bnb_4bit_use_double_quant=job.double_quantization,
            bnb_4bit_compute_dtype=quantized_compute_dtype(job),
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_model(job: JobConfig, model_dir: Path, warn: Callable[[str], None] | None = None) -> PreTrainedModel:
    """Load the base for training; `warn` receives messages the user should see (a `stage` event)."""
    quant = quantization_config(job)
    # Mixed precision keeps fp32 master weights for everything trainable; a frozen base can live in
    # the compute dtype (LoRA, freeze), full fine-tuning keeps fp32 weights under autocast.
    dtype = compute_dtype(job) if job.finetuning_type != "full" else torch.float32
    from app.train.kernels import attention_implementation

    kwargs: dict = {"dtype": dtype, "attn_implementation": attention_implementation(job)}
    if quant is not None:
        if not torch.cuda.is_available():
            message = QLORA_CPU_WARNING.format(bits=job.quantization_bit)
            log.warning(message)
            if warn is not None:
                warn(message)
        kwargs["quantization_config"] = quant
        # bitsandbytes places the weights at load time: on this rank's GPU (LOCAL_RANK under a launcher)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        kwargs["device_map"] = {"": local_rank} if torch.cuda.is_available() else {"": "cpu"}
    if job.stage == "rm":  # a reward model: the base with a one-output score head (app.train.reward)
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1,
                                                                   **kwargs | rope_arguments(job, model_dir))
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs | rope_arguments(job, model_dir))
    model.config.use_cache = False  # training: no KV cache (also keeps flattened batches isolated)
    from app.train.kernels import apply_liger

    apply_liger(job, model, warn)  # before PEFT wraps the layers
    return model


def lora_targets(job: JobConfig, model: PreTrainedModel) -> list[str] | str:
    if job.lora_target.strip().lower() == "all":
        return "all-linear"
    return [t.strip() for t in job.lora_target.split(",") if t.strip()]


def apply_method(job: JobConfig, model: PreTrainedModel) -> PreTrainedModel:
    """Wrap or freeze the model for the chosen fine-tuning type; returns the model to train."""
    if job.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if job.finetuning_type == "lora":
        from peft import LoraConfig, prepare_model_for_kbit_training

        if job.quantization_bit is not None:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=job.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        elif job.gradient_checkpointing:
            model.enable_input_require_grads()
        config = LoraConfig(
            r=job.lora_rank,
            lora_alpha=job.lora_alpha_value,
            lora_dropout=job.lora_dropout,
            target_modules=lora_targets(job, model),
            task_type="SEQ_CLS" if job.stage == "rm" else "CAUSAL_LM",
            **lora_variant_arguments(job),
        )
        model = peft_model(job, model, config)
        for param in model.parameters():  # trainable LoRA weights in fp32 even over a bf16 base
            if param.requires_grad:
                param.data = param.data.float()
        return model
    if job.finetuning_type == "freeze":
        freeze_except_last_layers(model, job.freeze_trainable_layers, job.freeze_trainable_modules)
        if job.gradient_checkpointing:
            model.enable_input_require_grads()
        return model
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == getattr(model.config, "num_hidden_layers", -1):
            return module
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} for freeze tuning")


def freeze_except_last_layers(model: PreTrainedModel, n_layers: int, modules: str) -> list[int]:
    """Freeze everything, then unfreeze the last n layers (the first |n| when negative)."""
    layers = decoder_layers(model)
    total = len(layers)
    if n_layers == 0 or abs(n_layers) > total:
        raise ValueError(f"freeze_trainable_layers: must be between -{total} and {total}, not 0; got {n_layers}")
    chosen = list(range(total - n_layers, total)) if n_layers > 0 else list(range(-n_layers))
    wanted = None if modules.strip().lower() == "all" else [m.strip() for m in modules.split(",") if m.strip()]
    for param in model.parameters():
        param.requires_grad_(False)
    for index in chosen:
        for name, param in layers[index].named_parameters():
            if wanted is None or any(part in name.split(".") for part in wanted):
                param.requires_grad_(True)
                param.data = param.data.float()
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"freeze_trainable_modules: '{modules}' matches no parameter in layers {chosen}")
    return chosen


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
