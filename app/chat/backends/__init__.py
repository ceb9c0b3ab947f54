"""Serving backends behind one protocol (base.py): transformers (default, batched), vLLM, llama.cpp.

    backend = load_backend("transformers", model=None, adapters=[("mine", "runs/mine")])

Each engine lives in its own module and is imported only when chosen; a missing package or a machine
that cannot run it gives a BackendUnavailable that says what to install or where it runs.
"""

from __future__ import annotations

from typing import Any

from app.chat.backends.base import Backend, Generation, Load, Sampling, StreamResult

BACKENDS = ("transformers", "vllm", "llamacpp")


class BackendUnavailable(RuntimeError):
    """The chosen engine cannot run here (package missing, no GPU, wrong model file): the message says why."""


def load_backend(kind: str, model: str | None = None, adapters: list[tuple[str, str]] | None = None,
                 **options: Any) -> Backend:
    """The named engine with the base `model` and `adapters` [(name, path)] loaded."""
    if kind == "transformers":
        from app.chat.backends.transformers import TransformersBackend

        backend: Any = TransformersBackend(model, dtype=options.get("dtype"), max_batch=options.get("max_batch") or 32)
        for name, path in adapters or []:
            backend.add_adapter(name, path)
        return backend
    if kind == "vllm":
        from app.chat.backends.vllm import VllmBackend

        return VllmBackend(model, adapters or [], **options)
    if kind == "llamacpp":
        from app.chat.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(model, adapters or [], **options)
    raise BackendUnavailable(f"Unknown backend '{kind}': choose one of {', '.join(BACKENDS)}.")


def backend_problem(kind: str, model: str | None = None) -> str | None:
    """Why `kind` cannot serve here (a sentence naming what to install or where it runs), or None."""
    import importlib.util

    if kind == "transformers":
        return None
    if kind == "vllm":
        from app.chat.backends.vllm import check_available

        try:
            check_available()
        except BackendUnavailable as exc:
            return str(exc)
        return None
    if kind == "llamacpp":
        if importlib.util.find_spec("llama_cpp") is None:
            return ("llama-cpp-python is not installed: `make gguf-quant` builds it "
                    "(pip install 'finetune-studio[gguf-quant]').")
        from app.chat.backends.llamacpp import gguf_file

        try:
            gguf_file(model)
        except BackendUnavailable as exc:
            return str(exc)
        return None
    return f"Unknown backend '{kind}': choose one of {', '.join(BACKENDS)}."


__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "Generation", "Load", "Sampling", "StreamResult",
           "backend_problem", "load_backend"]
