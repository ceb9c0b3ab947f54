"""Inference: one base model with LoRA adapters switched on top, greedy/sampled, streamed."""

from app.chat.adapters import AdapterError, BaseMismatchError
from app.chat.engine import ChatEngine, ContextLengthError, Generation, StreamResult, UnknownModelError

__all__ = ["AdapterError", "BaseMismatchError", "ChatEngine", "ContextLengthError", "Generation",
           "StreamResult", "UnknownModelError"]
