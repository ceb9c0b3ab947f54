"""The frozen linear layers of a LoRA job on CPU through oneDNN, forward and backward.

A LoRA step on CPU spends most of its time in the products of the frozen base weights: `x @ W.T` in the
forward and, in the backward, the gradient of the input `grad @ W` (a frozen weight needs no gradient of
its own). Both go through oneDNN with the weight packed once (app/models/onednn.py): W for the forward,
W.T for the backward. For the length of `trainer.train()` the packed pair replaces the plain weight, so
the cost is one more copy of those weights, not two. When training ends (finished, stopped or failed)
the plain weight is rebuilt from the packed one, bit for bit (a product with the identity matrix), before
anything saves, merges or evaluates.

Measured on the 2-core build machine (SmolLM2-135M, fp32, LoRA r8 q/v, the SFT job of
`bench/vs_llamafactory.py`): the matrix products of a step took 8.7 CPU s through MKL and 6.0 s packed,
and the side by side went from 2.24x to 2.77x LLaMA-Factory's samples/s (README "Training speed").

Not used (the plain path runs, and the job's `training` event says why): `packed_weights: never`; DPO
unless `packed_weights: always` (its activations are small next to the weights, so the packed copy adds
about a quarter to its peak: measured 1.26x LLaMA-Factory's peak RSS packed, 0.87x plain);
a GPU; bf16 or fp16 (autocast picks its own kernels); several processes (DDP and FSDP broadcast and shard
the weights); full or freeze tuning and QLoRA (no frozen fp32 nn.Linear, or checkpoints that save the
base weights); DoRA (it reads the base weight every step); `torch_compile`; too little free memory. The
output head is packed for its forward only: its plain weight stays (it is often the input embeddings'
too), and its backward runs through it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import mmap
import types
from collections.abc import Iterator

import torch

from app.config import JobConfig
from app.models import onednn

log = logging.getLogger(__name__)

BATCH_HINT = 256  # oneDNN tunes the blocked layout for about this many rows (a CPU micro-batch is one row)
STAGES = ("sft", "pt", "dpo")  # the stages whose trainers are known to leave the base weights alone
AUTO_STAGES = ("sft", "pt")  # packed under `auto`: their activations dwarf the packed copy
_ATTR = "_ftstudio_frozen"
_CHUNK_BYTES = 64 << 20  # the identity rows rebuilt at a time when unpacking


class _FrozenLinear(torch.autograd.Function):
    """y = x @ W.T + b with W and b frozen: the backward returns the input's gradient only, through the
    packed W.T, or through the plain W where it is kept (the output head)."""

    @staticmethod
    def forward(ctx, x, packed, packed_t, weight, bias):
        ctx.packed_t, ctx.weight = packed_t, weight
        return onednn.linear(x.contiguous(), packed, bias)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        grad_x = onednn.linear(grad, ctx.packed_t) if ctx.packed_t is not None else grad @ ctx.weight
        return grad_x, None, None, None, None


def _forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    packed, packed_t = getattr(self, _ATTR)
    weight = None if packed_t is not None else self.weight
    if x.dtype != torch.float32:
        return _FrozenLinear.apply(x.float(), packed, packed_t, weight, self.bias).to(x.dtype)
    return _FrozenLinear.apply(x, packed, packed_t, weight, self.bias)


def job_reason(job: JobConfig, on_gpu: bool, world_size: int) -> str | None:
    """None when the job (whatever the model) would run its frozen linears through oneDNN, else why not.
    Also what the memory estimate (app/train/memory.py) counts the packed copy by."""
    reasons = [
        (job.packed_weights == "never", "packed_weights is never"),
        (on_gpu, "a GPU runs the job"),
        (world_size > 1, "several processes share the job"),
        (job.stage not in STAGES, f"stage {job.stage}"),
        (job.stage not in AUTO_STAGES and job.packed_weights != "always",
         f"{job.stage} packs only with packed_weights: always (more memory)"),
        (job.finetuning_type != "lora" or job.quantization_bit is not None, "not a LoRA job in fp32"),
        (bool(job.bf16 or job.fp16), "mixed precision"),
        (job.use_dora, "DoRA reads the base weights every step"),
        (job.torch_compile, "torch_compile"),
    ]
    return next((why for hit, why in reasons if hit), None)


def why_not(job: JobConfig, model: torch.nn.Module, world_size: int) -> str | None:
    """None when the job's frozen linears can go through oneDNN, else the reason they do not."""
    reason = job_reason(job, torch.cuda.is_available(), world_size)
    if reason is None and not onednn.available():
        reason = "this torch build has no oneDNN linear"
    if reason is None and not hasattr(model, "peft_config"):
        reason = "no adapter on the model"
    return reason


def _frozen_fp32(module) -> bool:
    return (type(module) is torch.nn.Linear and not module.weight.requires_grad
            and module.weight.dtype == torch.float32 and module.weight.device.type == "cpu"
            and (module.bias is None or not module.bias.requires_grad)
            and "forward" not in module.__dict__)  # not a layer someone else (accelerate's hooks) wraps already


def _output_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head if head is not None and _frozen_fp32(head) else None


def _layers(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The frozen fp32 CPU nn.Linear layers whose weight no other module shares, but the output head."""
    head = _output_head(model)
    owners: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners[param.data_ptr()] = owners.get(param.data_ptr(), 0) + 1
    return [m for m in model.modules()
            if m is not head and _frozen_fp32(m) and owners[m.weight.data_ptr()] == 1]


def pack_head(head: torch.nn.Linear) -> None:
    """The output head packed for its forward only; it keeps its plain weight (often the input embeddings'
    too), through which its backward runs."""
    setattr(head, _ATTR, (onednn.pack(head.weight.data, BATCH_HINT), None))
    head.forward = types.MethodType(_forward, head)


def pack(layer: torch.nn.Linear, file_maps: list[tuple[int, int]] | None = None) -> None:
    """The layer's weight packed twice (W, W.T); the plain weight freed; its forward through oneDNN.
    `file_maps`: the process's private file mappings (`file_mappings()`), whose pages a freed weight
    leaves behind unless they are released."""
    weight = layer.weight.data
    setattr(layer, _ATTR, (onednn.pack(weight, BATCH_HINT), onednn.pack(weight.t(), BATCH_HINT)))
    layer.weight.data = torch.full((), float("nan")).expand(weight.shape)  # NaN: a stray reader is loud
    layer.forward = types.MethodType(_forward, layer)
    if file_maps:
        _release_pages(weight, file_maps)


def file_mappings() -> list[tuple[int, int]]:
    """(start, end) of this process's private mappings of files (Linux; none elsewhere)."""
    spans = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                if len(fields) >= 6 and fields[1].endswith("p") and fields[5].startswith("/"):
                    start, end = fields[0].split("-")
                    spans.append((int(start, 16), int(end, 16)))
    except OSError:
        pass
    return spans


def _release_pages(weight: torch.Tensor, file_maps: list[tuple[int, int]]) -> None:
    """transformers maps a safetensors file into memory and its weights are views of that mapping: freeing
    one does not give its pages back while the mapping lives (the embeddings keep it). Its whole pages are
    dropped instead (MADV_DONTNEED: the kernel would read them from the file again if anything did)."""
    start, end = weight.data_ptr(), weight.data_ptr() + weight.untyped_storage().nbytes()
    if not any(low <= start and end <= high for low, high in file_maps):
        return  # memory of its own: freed with the tensor
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, end // page * page
    if last > first:
        _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), mmap.MADV_DONTNEED)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def unpack(layer: torch.nn.Linear) -> None:
    """The plain weight back, exactly: rows of the identity through the packed product."""
    packed, packed_t = getattr(layer, _ATTR)
    if packed_t is None:  # the output head kept its weight
        delattr(layer, _ATTR)
        del layer.forward
        return
    out_features, in_features = layer.weight.shape
    if in_features <= out_features:  # I_in @ W.T = W.T
        weight = _identity_product(packed, in_features).t().contiguous()
    else:  # I_out @ (W.T).T = W
        weight = _identity_product(packed_t, out_features)
    layer.weight.data = weight
    delattr(layer, _ATTR)
    del layer.forward  # the class's own forward again


def _identity_product(packed: torch.Tensor, n: int) -> torch.Tensor:
    rows = max(1, _CHUNK_BYTES // (4 * n))
    parts = []
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        eye = torch.zeros(stop - start, n)
        eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        parts.append(onednn.linear(eye, packed))
    return torch.cat(parts)


@contextlib.contextmanager
def frozen_linears_packed(job: JobConfig, model: torch.nn.Module, world_size: int = 1) -> Iterator[str]:
    """For the block (training): the model's frozen linears on oneDNN. Yields one line for the job's events
    (what was packed, or why not); the plain weights are back when the block ends, however it ends."""
    reason = why_not(job, model, world_size)
    layers = [] if reason else _layers(model)
    head = None if reason else _output_head(model)
    size = sum(layer.weight.numel() * 4 for layer in layers)
    head_size = head.weight.numel() * 4 if head is not None else 0
    if not reason and not layers:
        reason = "no frozen linear layer"
    if not reason and not onednn.memory_to_spare(size + head_size, "the frozen linear weights"):
        reason = f"{(size + head_size) / 1e6:,.0f} MB more memory is not free"
    if reason:
        yield f"frozen linear layers through the default kernels ({reason})"
        return
    done: list[torch.nn.Linear] = []
    try:
        file_maps = file_mappings()
        with torch.no_grad():
            for layer in layers:
                pack(layer, file_maps)
                done.append(layer)
            if head is not None:
                pack_head(head)
                done.append(head)
        yield (f"{len(layers)} frozen linear layers{' and the output head' if head is not None else ''} "
               f"through oneDNN with packed weights ({(size + head_size) / 1e6:,.0f} MB more memory)")
    finally:
        with torch.no_grad():
            for layer in done:
                unpack(layer)
