"""Serving backends behind one protocol (base.py): transformers (default, batched), vLLM, llama.cpp."""

from app.chat.backends.base import Backend, Generation, Load, Sampling, StreamResult

__all__ = ["Backend", "Generation", "Load", "Sampling", "StreamResult"]
