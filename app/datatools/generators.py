"""Generator backends for synthetic data: one function `(messages, temperature, max_new_tokens) -> Reply`.

    local     app.chat.engine.ChatEngine: the base model (embedded by default) or a run's adapter on it
    endpoint  any OpenAI-compatible server through the official `openai` client; the key is read from
              the environment variable the job names (never from the job file)
"""

from __future__ import annotations

import logging
import os
from typing import Any

from app.config.generate import GenerateConfig
from app.data.synth import Generate, Reply

log = logging.getLogger(__name__)

ENDPOINT_TIMEOUT_S = 300.0


class GeneratorError(RuntimeError):
    """The generator could not be reached or refused a request; the message says which and why."""


def make_generator(config: GenerateConfig) -> tuple[Generate, str]:
    """(the generate function, a description for the run's events)."""
    if config.api_base:
        return endpoint_generator(config.api_base, config.api_model or "", config.api_key_env)
    return local_generator(config.model_name_or_path, config.adapter_name_or_path)


def local_generator(model: str | None, adapter: str | None) -> tuple[Generate, str]:
    from app.chat.engine import ChatEngine

    engine = ChatEngine(model)
    name = None
    if adapter:
        name = engine.add_adapter("generator", adapter)

    # No per-call seed: the same prompt asked twice must be free to give two different rows.
    def generate(messages: list[dict[str, str]], temperature: float, max_new_tokens: int) -> Reply:
        result = engine.generate(messages, model=name, temperature=temperature, max_new_tokens=max_new_tokens)
        return Reply(result.text, result.finish_reason == "length")

    where = f"{engine.base_name}" + (f" + adapter {adapter}" if adapter else "")
    return generate, f"local model {where}"


def endpoint_generator(api_base: str, api_model: str, key_env: str) -> tuple[Generate, str]:
    import openai

    key = os.environ.get(key_env) if key_env else None
    if not key:
        log.info("%s is not set: calling %s without a key", key_env or "the key variable", api_base)
    client = openai.OpenAI(base_url=api_base, api_key=key or "not-set", timeout=ENDPOINT_TIMEOUT_S, max_retries=2)

    def generate(messages: list[dict[str, str]], temperature: float, max_new_tokens: int) -> Reply:
        kwargs: dict[str, Any] = {"model": api_model, "messages": messages, "temperature": temperature,
                                  "max_tokens": max_new_tokens}
        try:
            reply = client.chat.completions.create(**kwargs)
        except openai.AuthenticationError as exc:
            raise GeneratorError(f"{api_base} refused the key in ${key_env}: {_message(exc)}") from None
        except openai.NotFoundError as exc:
            raise GeneratorError(f"{api_base} has no model {api_model!r}: {_message(exc)}") from None
        except openai.APIConnectionError as exc:
            raise GeneratorError(f"cannot reach {api_base}: {exc}") from None
        except openai.APIError as exc:
            raise GeneratorError(f"{api_base} answered with an error: {_message(exc)}") from None
        choice = reply.choices[0]
        return Reply(choice.message.content or "", choice.finish_reason == "length")

    return generate, f"endpoint {api_base} model {api_model}"


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(exc)
