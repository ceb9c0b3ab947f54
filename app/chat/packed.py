"""The serving engine's linear layers on CPU through oneDNN with prepacked weights.

Where the batched decode step lost its time (SmolLM2-135M, fp32, one CPU core, README "Serving"): all 211
linear layers of one step took 46 ms for 1 row and 100-110 ms for 16 rows through `F.linear` (MKL sgemm;
MKL's own prepacked weights, `torch.ops.mkl._mkl_linear`, took 96-101 ms), but 38-40 ms and 56 ms
through oneDNN with the weights reordered once into its blocked layout (the op torch's Inductor uses for
frozen CPU linears, `torch.ops.mkldnn._linear_pointwise`). oneDNN also rounds a row the same in a batch
of 2 to 64 rows; only its one-row kernel differs, and only for one of SmolLM2's five shapes (1536 -> 576),
where MKL rounded batches of 1, 2, 3 and 5 rows differently from 64 for all five. Sending a lone row through as two
copies would make even that exact, but cost a single stream 25% (52 -> 65 ms a step): not done.

The model object stays a plain transformers model: the packed path is taken only inside `engaged()`,
which the engine's scheduler enters for its own forward passes; anyone else calling the same model
(generate, evaluation, a training step) goes through `F.linear` as always. A weight changed in place
after packing (its version counter moved) is never served from the stale copy. The packed copy costs
as much memory as the linear weights, so it is made only when the machine has that memory to spare.
"""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from app.models import onednn

PACK_HINT = 16  # the batch size oneDNN tunes the blocked layout for; rows come out the same at any size
_state = threading.local()
available = onednn.available


@contextlib.contextmanager
def engaged() -> Iterator[None]:
    """Linear layers packed by `pack_linears` use their packed weights in this thread meanwhile."""
    before = getattr(_state, "on", False)
    _state.on = True
    try:
        yield
    finally:
        _state.on = before


def _forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    packed = self._ftstudio_packed
    if (getattr(_state, "on", False) and packed is not None and x.dtype == torch.float32 and x.device.type == "cpu"
            and self.weight._version == self._ftstudio_version and not torch.is_grad_enabled()):
        return onednn.linear(x, packed, self.bias)
    return F.linear(x, self.weight, self.bias)


def _linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.dtype == torch.float32
            and m.weight.device.type == "cpu"]


def pack_linears(model: torch.nn.Module) -> int:
    """Give the model's fp32 CPU linear layers a oneDNN-packed weight; returns how many bytes that took
    (0: not done: another device or dtype, no oneDNN, or not enough free memory)."""
    if not available():
        return 0
    layers = _linears(model)
    size = sum(layer.weight.numel() * 4 for layer in layers)
    if not layers or not onednn.memory_to_spare(size, "linear weights"):
        return 0
    with torch.no_grad():
        for layer in layers:
            layer._ftstudio_packed = onednn.pack(layer.weight, PACK_HINT)
            layer._ftstudio_version = layer.weight._version
            layer.forward = types.MethodType(_forward, layer)
    return size


def packed_bytes(model: Any) -> int:
    return sum(m._ftstudio_packed.numel() * 4 for m in model.modules()
               if getattr(m, "_ftstudio_packed", None) is not None)
