"""POST /v1/completions: plain prompts (no chat template), one or several, n choices each."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse

from app.chat.backends.base import Delta, Sampling
from app.serve.chat_api import CLIENT_CLOSED
from app.serve.context import ServeContext, now
from app.serve.openai_format import completion_logprobs, finish_reason, sse, sse_error, usage
from app.serve.schemas import CompletionRequest
from app.serve.streams import ClientGone, Live, collect_all, merged


def _encode(tokenizer: Any, text: str) -> list[int]:
    if not text:
        raise ValueError("prompt must not be empty.")
    return list(tokenizer(text)["input_ids"])  # with the tokenizer's own special tokens (a BOS, if it uses one)


async def completions(body: CompletionRequest, request: Request, ctx: ServeContext) -> Response:
    started = now()
    body.check()
    ctx.check_model(body.model)
    tokenizer = ctx.backend.tokenizer_for(body.model)
    temperature, top_p = body.sampling_values()
    n = body.n or 1
    prompts = body.prompts
    encoded = [await ctx.call(_encode, tokenizer, text, param="prompt") for text in prompts]
    sink: asyncio.Queue | None = asyncio.Queue() if body.stream else None
    lives: list[Live] = []
    try:
        for p, ids in enumerate(encoded):
            samplings = [Sampling(temperature, top_p, body.max_tokens or 16, body.stop_list,
                                  None if body.seed is None else body.seed + j, body.logprobs)
                         for j in range(n)]
            lives += await ctx.start(ids, body.model, samplings, started, param="prompt", sink=sink,
                                     first_index=p * n)
    except BaseException:
        for live in lives:
            live.result.cancel()
        raise
    prompt_tokens = sum(len(ids) for ids in encoded)
    completion_id = f"cmpl-{uuid.uuid4().hex[:24]}"
    if body.stream:
        assert sink is not None
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventSourceResponse(_stream(lives, sink, body, completion_id, prompt_tokens, include_usage),
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        generations = await collect_all(lives, request)
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    choices = []
    for i, generation in enumerate(generations):
        head = prompts[i // n] if body.echo else ""
        choices.append({"index": i, "text": head + generation.text, "finish_reason": finish_reason(generation),
                        "logprobs": completion_logprobs(generation.logprobs, len(head))
                        if body.logprobs is not None else None})
    return JSONResponse({"id": completion_id, "object": "text_completion", "created": int(time.time()),
                         "model": body.model, "choices": choices,
                         "usage": usage(prompt_tokens, sum(g.completion_tokens for g in generations))})


async def _stream(lives: list[Live], sink: asyncio.Queue, body: CompletionRequest, completion_id: str,
                  prompt_tokens: int, include_usage: bool) -> AsyncIterator[bytes]:
    created = int(time.time())
    n = body.n or 1
    offsets = {live.index: 0 for live in lives}

    def chunk(index: int, text: str, finish: str | None = None, logprobs: Any = None) -> bytes:
        payload: dict[str, Any] = {"id": completion_id, "object": "text_completion", "created": created,
                                   "model": body.model, "choices": [{"index": index, "text": text,
                                                                     "logprobs": logprobs, "finish_reason": finish}]}
        if include_usage:
            payload["usage"] = None
        return sse(payload)

    completion_tokens = 0
    try:
        if body.echo:
            for live in lives:
                head = body.prompts[live.index // n]
                offsets[live.index] = len(head)
                yield chunk(live.index, head)
        async for index, item in merged(lives, sink):
            if isinstance(item, Delta):
                logprobs = completion_logprobs(item.logprobs, offsets[index]) if body.logprobs is not None else None
                offsets[index] += len(item.text)
                yield chunk(index, item.text, logprobs=logprobs)
            else:
                completion_tokens += item.completion_tokens
                yield chunk(index, "", finish_reason(item))
        if include_usage:
            yield sse({"id": completion_id, "object": "text_completion", "created": created, "model": body.model,
                       "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
    except Exception as exc:  # noqa: BLE001
        yield sse_error(exc)
    finally:
        for live in lives:
            live.result.cancel()
    yield sse("[DONE]")
