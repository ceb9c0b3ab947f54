"""Inference: serving backends (app/chat/backends), the batched transformers engine, adapters, tools.

Names load lazily (PEP 562): `import app.chat.threads` must not pull in torch before the OpenMP policy is set.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "AdapterError": "app.chat.adapters", "BaseMismatchError": "app.chat.adapters",
    "ChatEngine": "app.chat.engine", "ContextLengthError": "app.chat.engine", "Generation": "app.chat.engine",
    "StreamResult": "app.chat.engine", "UnknownModelError": "app.chat.engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'app.chat' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
