"""Which attention kernel and fused kernels a job trains with (LLaMA-Factory's `flash_attn` and
`enable_liger_kernel` keys), and mixed precision by default on GPUs that have bfloat16.

Padding-free batches are one flattened row with per-sequence position ids: FlashAttention-2's varlen
kernel reads the sequence boundaries (`cu_seq_lens_*`, which TRL's collator provides) and never
computes attention across rows; PyTorch SDPA gets a block-diagonal mask built by transformers from the
position ids. Both keep the rows isolated (tests/test_train_speed.py checks the SDPA path on CPU).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

from app.config import JobConfig

KERNEL_NAMES = {"disabled": "eager", "sdpa": "sdpa", "fa2": "flash_attention_2"}


class KernelError(RuntimeError):
    """A kernel the job asks for cannot run here; the message says why and what to change."""


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def attention_implementation(job: JobConfig, on_gpu: bool | None = None) -> str:
    """transformers' attn_implementation for the job."""
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    if job.flash_attn == "auto":
        return "flash_attention_2" if on_gpu and flash_attn_installed() and job.padding_free else "sdpa"
    if job.flash_attn == "fa2":
        if not on_gpu:
            raise KernelError("flash_attn: fa2 needs a CUDA GPU; use auto or sdpa on this machine")
        if not flash_attn_installed():
            raise KernelError("flash_attn: fa2 needs the flash-attn package (pip install flash-attn "
                              "--no-build-isolation); or use auto / sdpa")
    return KERNEL_NAMES[job.flash_attn]


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def apply_liger(job: JobConfig, model: torch.nn.Module, warn: Callable[[str], None] | None = None) -> bool:
    """Liger's fused RMSNorm / RoPE / SwiGLU on the base model (before PEFT wraps it); returns whether
    applied. The loss head stays the studio's (TRL's fused head on GPU), so Liger's own fused
    cross-entropy is off."""
    if not job.enable_liger_kernel:
        return False
    if not torch.cuda.is_available():
        if warn is not None:
            warn("enable_liger_kernel: Liger kernels are Triton GPU kernels; ignored on CPU")
        return False
    if not liger_available():
        raise KernelError("enable_liger_kernel: needs the liger-kernel package (pip install liger-kernel)")
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=False)
    return True


def resolve_precision(job: JobConfig) -> JobConfig:
    """The job with bf16 decided (true or false), as the worker trains it."""
    return job.replace(bf16=default_bf16(job))


def default_bf16(job: JobConfig) -> bool:
    """bf16 mixed precision when the job does not choose (bf16 empty): on CUDA GPUs with bfloat16
    (Ampere and newer) unless fp16 is asked; never on CPU (fp32 there, as before)."""
    if job.bf16 is not None:
        return bool(job.bf16)
    return (not job.fp16) and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
