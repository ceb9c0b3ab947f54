"""OpenAI response pieces: SSE framing, usage, finish reasons, log-probabilities in both API styles."""

from __future__ import annotations

import json
from typing import Any

from fastapi.sse import format_sse_event

from app.chat.backends.base import Generation, TokenLogprob
from app.serve.schemas import error_body


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return format_sse_event(data_str=data)


def sse_error(exc: BaseException) -> bytes:
    """Headers are gone once a stream started: report in-stream, as OpenAI does."""
    return sse(error_body(f"Generation failed: {type(exc).__name__}: {exc}", "server_error"))


def finish_reason(generation: Generation) -> str:
    return "length" if generation.finish_reason == "length" else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(items: list[TokenLogprob] | None) -> dict[str, Any]:
    """Chat style: {"content": [{token, logprob, bytes, top_logprobs: [...]}], "refusal": null}."""
    content = [_entry(t.token, t.logprob) | {"top_logprobs": [_entry(tok, lp) for tok, lp in t.top]}
               for t in items or []]
    return {"content": content, "refusal": None}


def completion_logprobs(items: list[TokenLogprob] | None, offset: int) -> dict[str, Any]:
    """Completions style: parallel lists of tokens, their log-probabilities, alternatives and offsets."""
    tokens, logprobs, tops, offsets = [], [], [], []
    for t in items or []:
        tokens.append(t.token)
        logprobs.append(t.logprob)
        tops.append(dict(t.top))
        offsets.append(offset)
        offset += len(t.token)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}
