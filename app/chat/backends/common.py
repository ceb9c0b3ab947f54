"""Chat helpers every backend shares: render a conversation to prompt ids, `stream` and `generate`.

A backend supplies `tokenizer_for`, `submit` and `context_window`; these methods turn messages and the
familiar keyword arguments (temperature, top_p, max_new_tokens, stop, seed) into a `Sampling` and a
submission, so the Chat tab, `ftstudio chat`, the evaluation code and the API call every engine alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.chat.backends.base import (
    ContextLengthError,
    Generation,
    Message,
    Sampling,
    StreamResult,
    UnsupportedError,
)


def renders_tools(tokenizer: Any) -> bool:
    """Whether the chat template reads `tools` (a template that never mentions them would drop them)."""
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("tool_use") or template.get("default")
    return bool(template) and "tools" in str(template)


def render_ids(tokenizer: Any, messages: Sequence[Message], tools: list[Any] | None = None,
               template_kwargs: dict[str, Any] | None = None) -> list[int]:
    """The prompt's token ids; `template_kwargs` are extra template variables for this request (vLLM's
    chat_template_kwargs, e.g. {"enable_thinking": False} for Qwen3)."""
    if not messages:
        raise ValueError("messages must hold at least one message.")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("This model's tokenizer has no chat template: set `template` in the job that trained "
                         "it, or use an instruct base model.")
    if tools and not renders_tools(tokenizer):
        raise UnsupportedError("This model's chat template does not render tools, so the model would never see "
                               "them: serve a model (or an adapter saved with a tokenizer) whose template does.")
    try:
        encoded = tokenizer.apply_chat_template(list(messages), tools=tools or None, add_generation_prompt=True,
                                                tokenize=True, return_dict=True, **(template_kwargs or {}))
    except Exception as exc:  # noqa: BLE001 - a request's own template variables broke the template: its mistake
        if not template_kwargs:
            raise
        raise ValueError(f"chat_template_kwargs: the chat template failed with them: {type(exc).__name__}: "
                         f"{exc}") from exc
    return list(encoded["input_ids"])


def fit_to_window(prompt_tokens: int, max_new_tokens: int, window: int) -> int:
    """max_new_tokens, cut so prompt + completion fits the context; raises when the prompt alone does not."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1.")
    if window and prompt_tokens >= window:
        raise ContextLengthError(f"The prompt is {prompt_tokens} tokens; this model's context is {window}.")
    return min(max_new_tokens, window - prompt_tokens) if window else max_new_tokens


class ChatMethods:
    """Mixed into a backend: prompt_ids / stream / generate over its tokenizer_for and submit."""

    def tokenizer_for(self, model: str | None = None) -> Any:  # pragma: no cover - every backend defines it
        raise NotImplementedError

    def submit(self, prompt_ids: list[int], model: str | None, sampling: Sampling) -> StreamResult:
        raise NotImplementedError  # pragma: no cover

    def prompt_ids(self, messages: Sequence[Message], model: str | None = None,
                   tools: list[Any] | None = None, template_kwargs: dict[str, Any] | None = None) -> list[int]:
        """The prompt token ids a request would feed the model (chat template + generation prompt)."""
        return render_ids(self.tokenizer_for(model), messages, tools, template_kwargs)

    def stream(self, messages: Sequence[Message], model: str | None = None, temperature: float = 0.0,
               top_p: float = 1.0, max_new_tokens: int = 256, stop: list[str] | None = None,
               seed: int | None = None, **more: Any) -> StreamResult:
        """Text deltas as they are generated; `.generation` once exhausted. Checks (unknown model, prompt
        too long) raise here; generation starts at the first `next()` or `start()`."""
        sampling = Sampling(temperature=float(temperature or 0.0), top_p=float(top_p), max_new_tokens=max_new_tokens,
                            stop=[s for s in (stop or []) if s], seed=seed, **more)
        return self.submit(self.prompt_ids(messages, model), model, sampling)

    def generate(self, messages: Sequence[Message], model: str | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, max_new_tokens: int = 256, stop: list[str] | None = None,
                 seed: int | None = None, **more: Any) -> Generation:
        """One reply. temperature 0 = greedy; stop strings end generation and are cut from the text."""
        result = self.stream(messages, model, temperature, top_p, max_new_tokens, stop, seed, **more)
        for _ in result.deltas():
            pass
        assert result.generation is not None
        return result.generation
