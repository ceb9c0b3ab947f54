"""oneDNN's linear kernel on CPU with a weight reordered once into its blocked layout.

The op torch's Inductor uses for frozen CPU linears (`torch.ops.mkldnn._linear_pointwise` over a weight
from `_reorder_linear_weight`). Two users: serving (app/chat/packed.py: the decode steps of the batched
engine) and training (app/train/frozen_linears.py: the frozen base weights of an adapter job, forward
and backward). Measured on this project's 2-core AMD EPYC, fp32, 2 threads, GFLOP/s of one product
(rows x 576 -> 1536 and the other shapes of SmolLM2-135M): MKL's sgemm through `F.linear` 111-190,
oneDNN packed 187-217, the same for the backward product `grad @ W` against a packed `W.t()`.

A packed weight costs as much memory as the weight; `memory_to_spare` says whether the machine has it.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def available() -> bool:
    """This torch build has oneDNN and its packed-weight linear ops."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def pack(weight: torch.Tensor, batch_hint: int) -> torch.Tensor:
    """`weight` ([out, in], fp32, CPU) in oneDNN's blocked layout, tuned for about `batch_hint` rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), batch_hint)


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias, with the weight packed by `pack` (x of any leading shape)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def memory_to_spare(size: int, what: str) -> bool:
    """True when `size` more bytes leave at least as much again free (else logged, with `what`)."""
    try:
        import psutil

        free = psutil.virtual_memory().available
    except Exception:  # noqa: BLE001 - no reading: stay on the plain path
        return False
    if free < 2 * size:
        log.info("not packing %s: %.0f MB would leave too little of %.0f MB free", what, size / 1e6, free / 1e6)
        return False
    return True
