"""The chat engine the studio uses everywhere (Chat tab, `ftstudio chat`, the API, evaluation).

    engine = ChatEngine()                      # the embedded SmolLM2, cuda if present else cpu fp32
    engine.add_adapter("mine", "runs/sft-lora-20261101")
    engine.generate([{"role": "user", "content": "Hi"}], model="mine").text
    for delta in (result := engine.stream(messages)): print(delta, end="")

It is the transformers backend (app/chat/backends/transformers.py): one base in memory, LoRA adapters
as named PEFT adapters, concurrent requests decoded together in one batch. Other serving engines (vLLM,
llama.cpp) implement the same protocol (app/chat/backends/base.py).
"""

from __future__ import annotations

from app.chat.backends.base import (
    ContextLengthError,
    Delta,
    Generation,
    Sampling,
    StreamResult,
    TokenLogprob,
    UnknownModelError,
    UnsupportedError,
)
from app.chat.backends.transformers import TransformersBackend, pick_device, pick_dtype


class ChatEngine(TransformersBackend):
    """The default engine: transformers, batched. Same constructor as TransformersBackend."""


__all__ = ["ChatEngine", "ContextLengthError", "Delta", "Generation", "Sampling", "StreamResult", "TokenLogprob",
           "UnknownModelError", "UnsupportedError", "pick_device", "pick_dtype"]
